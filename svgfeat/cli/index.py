"""`svgfeat index build CACHE -o INDEX` and `svgfeat index info INDEX`: faiss indexes over a feature cache."""

import json

import click

from ._types import UNIT_OPEN, Count, NonEmptyPath, Real


@click.group()
def index():
    """Build and inspect retrieval indexes over a feature cache."""


@index.command()
@click.argument("cache", type=NonEmptyPath(exists=True, file_okay=False))
@click.option("-o", "--out", "out", required=True, type=NonEmptyPath(dir_okay=False),
              help="Index file to write (a sidecar OUT.json is written beside it).")
@click.option("--group", default=None,
              help="Cache group to index [default: pooled; dino with --patch].")
@click.option("--factory", default=None,
              help="faiss index_factory string (Flat, HNSW32, IVF4096,PQ64, OPQ16,IVF256,PQ16...) or auto "
                   "[default: Flat; auto with --patch].")
@click.option("--metric", type=click.Choice(["cosine", "l2", "ip"]), default="cosine", show_default=True)
@click.option("--auto", "auto", is_flag=True, help="Pick the factory from the data size and --max-memory.")
@click.option("--max-memory", default=None,
              help="Memory budget, e.g. 4GB: --auto picks a factory within it [default: 4GB]; any factory that "
                   "does not fit is refused up front [default: the memory available now].")
@click.option("--nprobe", type=Count(1, "a number of lists", 1 << 24), default=None,
              help="IVF lists visited per query [default: tuned to --target-recall].")
@click.option("--ef-search", type=Count(1, "a search depth", 1 << 20), default=None,
              help="HNSW search depth [default: tuned to --target-recall].")
@click.option("--gpu", is_flag=True, help="Build and search on the GPU (faiss-gpu); CPU if unavailable.")
@click.option("--patch", is_flag=True, help="Index every patch vector (patch-level retrieval).")
@click.option("--stride", type=Count(1, "a patch stride", 64), default=1, show_default=True,
              help="--patch: keep patches on every STRIDE-th grid row and column.")
@click.option("--fraction", type=UNIT_OPEN, default=None,
              help="--patch: keep a random fraction of the patches (seeded).")
@click.option("--seed", default=0, show_default=True, type=Count(0, "a seed"),
              help="Seed of training samples / subsampling.")
@click.option("--target-recall", default=0.95, show_default=True, type=UNIT_OPEN,
              help="Approximate indexes: recall@10 to reach on held-out queries; the smallest nprobe / efSearch "
                   "reaching it becomes the index's default (unless --nprobe / --ef-search is given).")
@click.option("--time-budget", default=540.0, show_default=True, type=Real(0, 7 * 86400, "seconds"),
              help="Seconds of the whole build after which tuning stops with the best setting found (tuning "
                   "always gets a tenth of it).")
@click.option("--val", "val", default=None, type=click.Path(exists=True, file_okay=False),
              help="Cache of held-out queries (same encoder) for the recall [default: 1000 rows of CACHE kept out "
                   "of the index until measured].")
@click.option("--overwrite", is_flag=True, help="Replace OUT (+ .json, .keys.npy) even if svgfeat did not write it.")
def build(cache, out, group, factory, metric, auto, max_memory, nprobe, ef_search, gpu, patch, stride, fraction,
          seed, target_recall, time_budget, val, overwrite):
    """Index the vectors of CACHE (memory-mapped, added in batches) and write OUT + OUT.json."""
    from ..atomic import check_output
    from ..cache import open_cache
    from ..heads.index_factory import parse_memory

    for suffix in ("", ".json", ".keys.npy"):  # before any work: never replace a file svgfeat did not write
        check_output(f"{out}{suffix}", overwrite, "index file")

    c = open_cache(cache)
    if max_memory is not None:
        parse_memory(max_memory)
    device = "cuda" if gpu else "cpu"
    factory = "auto" if auto else (factory or ("auto" if patch else "Flat"))
    if patch:
        from ..heads.patch_retrieval import PatchIndex

        if val is not None:
            raise click.BadParameter("--val applies to global indexes; patch indexes hold out patches of CACHE")
        idx = PatchIndex(factory, metric, group=group or "dino", stride=stride, fraction=fraction, seed=seed,
                         nprobe=nprobe, ef_search=ef_search, max_memory=max_memory, device=device,
                         target_recall=target_recall, time_budget=time_budget, progress=True).fit(c)
    else:
        if stride != 1 or fraction is not None:
            raise click.BadParameter("--stride/--fraction subsample patches and need --patch")
        from ..heads.retrieval import FaissIndex

        idx = FaissIndex(factory, metric, group=group or "pooled", nprobe=nprobe, ef_search=ef_search,
                         max_memory=max_memory, seed=seed, device=device, target_recall=target_recall,
                         time_budget=time_budget, progress=True).fit(c, queries=open_cache(val) if val else None)
    path = idx.save(out)
    _print_info(idx.info())
    click.echo(f"wrote {path} and {path.name}.json")
    rec = idx.info().get("recall") or {}
    if rec.get("met") is False:
        click.echo(f"warning: recall@{rec['k']} target {rec['target']} not met: {recall_line(rec)}", err=True)


@index.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar summary as JSON.")
def info(index_path, as_json):
    """Describe an index: factory, metric, size, provenance, measured recall. The index file itself is read
    too, so an empty, truncated or foreign file is reported as broken (exit 2), not described."""
    from ..heads.patch_retrieval import load_any
    from ..heads.retrieval import read_sidecar

    side = read_sidecar(index_path)
    load_any(index_path, device="cpu")
    side.pop("meta", None)
    if as_json:
        click.echo(json.dumps(side, indent=1))
    else:
        _print_info(side)


def _print_info(info: dict) -> None:
    prov = info.get("provenance") or {}
    enc = prov.get("encoder") or {}
    click.echo(f"kind:      {info.get('kind', 'global')}")
    click.echo(f"factory:   {info['factory']}" + (f"  ({info['factory_reason']})"
                                                  if info.get("factory_reason") not in (None, "given") else ""))
    click.echo(f"metric:    {info['metric']}")
    click.echo(f"vectors:   {info['ntotal']} x {info['dim']} (group {info.get('group')}, backend "
               f"{info.get('backend')})")
    if info.get("patch"):
        p = info["patch"]
        click.echo(f"patches:   grid {p['grid'][0]}x{p['grid'][1]} of {p['rows']} images, stride {p['stride']}, "
                   f"fraction {p['fraction']}")
    if info.get("search_params"):
        click.echo("search:    " + ", ".join(f"{k}={v}" for k, v in info["search_params"].items()))
    rec = info.get("recall")
    if rec:
        click.echo(f"recall@{rec['k']}: {recall_line(rec)}")
    if enc:
        click.echo(f"encoder:   {enc.get('model')} (dinov3 sha256 {enc.get('dinov3_sha256')}, svg sha256 "
                   f"{enc.get('svg_sha256')}, alignment {enc.get('alignment')})")
    if prov.get("transform"):
        t = prov["transform"]
        click.echo(f"transform: {t.get('preset')} {t.get('size')}px")
    if prov.get("cache"):
        click.echo(f"cache:     {prov['cache']}")
    if info.get("build_seconds") is not None:
        click.echo(f"built in:  {info['build_seconds']:.2f} s")


def recall_line(rec: dict) -> str:
    """The stored recall in words: value, how it was measured, the target and whether it was met (and why not)."""
    if rec.get("exact"):
        return f"{rec['recall']:.4f} (exact search)"
    src = {"val": "queries from --val", "rows": "rows held out of the index"}.get(rec.get("held_out"), "queries")
    text = f"{rec['recall']:.4f} (measured on {rec['queries']} {src}"
    if rec.get("params"):
        text += ", " + ", ".join(f"{k}={v}" for k, v in rec["params"].items())
    if rec.get("target") is not None:
        text += f"; target {rec['target']} " + ("met" if rec.get("met") else f"NOT met: {rec.get('why') or ''}")
    return text + ")"
