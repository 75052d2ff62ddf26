"""`svgfeat search INDEX QUERY... -k 10 [--json] [--html out.html]`: nearest neighbours of images or cache rows."""

import json

import click

from ..outputs import check_outputs
from ._common import encoder_options, overwrite_option, printable, write_output
from ._types import K_NEIGHBOURS, Count


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(exists=True, dir_okay=False))
@click.argument("queries", metavar="QUERY...", nargs=-1, required=True)
@click.option("-k", "k", default=10, show_default=True, type=K_NEIGHBOURS, help="Neighbours per query.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              help="Write an HTML page with query and result thumbnails.")
@click.option("--region", default=None, help="Patch indexes: query region ROW0:ROW1,COL0:COL1 of the patch grid.")
@click.option("--aggregate", type=click.Choice(["max", "sum"]), default="max", show_default=True,
              help="Patch indexes: per-image score (best patch, or sum over query patches).")
@click.option("--nprobe", type=Count(1, "a number of lists", 1 << 24), default=None,
              help="Override the IVF lists visited [default: the one tuned at build time].")
@click.option("--ef-search", type=Count(1, "a search depth", 1 << 20), default=None,
              help="Override the HNSW search depth [default: the one tuned at build time].")
@encoder_options
@overwrite_option
def search(index_path, queries, k, as_json, html_out, region, aggregate, nprobe, ef_search, dinov3, svg,
           svg_config, model, alignment, device, overwrite):
    """Search INDEX with each QUERY: an image file (encoded with the index's encoder: the weight files its cache
    recorded, or --model/--dinov3/--svg given here; their sha256 must match) or a cache row CACHE:ROW."""
    from ..heads.patch_retrieval import PatchIndex, load_any
    from ..serve.engine import SearchService, parse_query, parse_region

    check_outputs([html_out], overwrite, "--html file")
    idx = load_any(index_path, device=device)
    flat = idx.index_ if isinstance(idx, PatchIndex) else idx
    flat.set_params(nprobe=nprobe or flat.nprobe, ef_search=ef_search or flat.ef_search)
    parsed = [parse_query(q) for q in queries]
    encoder = None
    if any(p[0] == "image" for p in parsed):
        from ..serve.engine import index_encoder

        encoder = index_encoder(flat.provenance_, dinov3, svg, svg_config, model, alignment, device)
    service = SearchService(idx, encoder, device=device)
    reg = parse_region(region)
    if reg is not None and not service.patch:
        raise click.BadParameter("--region applies to patch indexes (svgfeat index build --patch)")
    out = [{"query": q, "results": service.query(q, k, reg, aggregate)} for q in queries]
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        params = flat.search_params()
        if params:  # approximate: say with which settings, and what recall they were measured to give
            from .index import recall_line

            rec = flat.recall_
            click.echo(f"index: {flat.factory_}, " + ", ".join(f"{k}={v}" for k, v in params.items())
                       + (f"; recall@{rec['k']} at build: {recall_line(rec)}" if rec else ""))
        for item in out:
            click.echo(f"query: {printable(item['query'])}")
            for rank, r in enumerate(item["results"], 1):
                extra = (f"  [{printable(r['class'] or r['label'])}]" if r.get("class") or r.get("label", -1) >= 0
                         else "")
                patch = f"  patch {tuple(r['patches'][0])}" if r.get("patches") else ""
                path = printable(r.get("path") or "")
                click.echo(f"  {rank:3d}. {r['score']:+.4f}  id {r['id']:<7d} {path}{extra}{patch}")
    if html_out:
        _write_html(html_out, service, out)
        if not as_json:
            click.echo(f"wrote {printable(html_out)}")


def _write_html(path, service, out) -> None:
    from ..serve.engine import parse_query
    from ..serve.report import render_report
    from ..serve.thumbs import data_uri, item_thumb_uri, thumbnail_jpeg

    queries = []
    for item in out:
        p = parse_query(item["query"])
        thumb = None
        if p[0] == "image":
            from ..heads.query import load_query_image

            thumb = data_uri(thumbnail_jpeg(load_query_image(p[1])))
        else:
            from ..cache import open_cache

            c = open_cache(p[1])
            meta = {"paths": c.paths, "root": c.manifest.get("dataset", {}).get("root")}
            thumb = item_thumb_uri(meta, p[2] % len(c))
        results = [{**r, "thumb": item_thumb_uri(service.meta, r["id"])} for r in item["results"]]
        queries.append({"query": item["query"], "thumb": thumb, "results": results})
    write_output(path, render_report("svgfeat search", service.info(), queries))
