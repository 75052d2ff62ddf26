"""Dataset -> encoder -> feature cache. Resumable, shard-atomic, ``torchrun``-aware.

Shard ``s`` always holds dataset items ``[s*S, (s+1)*S)`` (S = ``shard_size``), whatever the number of
processes: rank r of W writes the shards with ``s % W == r``, rank 0 writes the manifest after a barrier.
Rows inside a shard are encoded in consecutive batches of ``batch_size`` rows, so the result of a
resumed or multi-process run is identical to an uninterrupted single-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import _version
from .cache.manifest import MANIFEST, read_manifest, request_diff, shard_name, write_json_atomic
from .cache.reader import open_cache
from .cache.shards import DTYPES, file_sha256, write_shard
from .data import open_dataset
from .data.decode import DecodeError
from .data.transforms import Transform
from .data.views import make_view
from .errors import CacheError, ConfigError, SvgfeatError
from .models.align import AlignmentStats
from .models.svg import BASE_GROUPS, layers_needed

DEFAULT_GROUPS = ("latent", "cls", "pooled")


def encoder_spec(enc) -> dict:
    """The encoder fields a cache records and checks: model, weight sha256s, alignment, channels."""
    prov = enc.provenance or {}
    fixed = enc.align.fixed_stats_dict() if enc.alignment == "fixed" and enc.align.has_fixed_stats else None
    return {"model": enc.config.get("name", "custom"),
            "dinov3_sha256": (prov.get("dinov3") or {}).get("sha256"),
            "svg_sha256": (prov.get("svg") or {}).get("sha256"),
            "alignment": enc.alignment, "fixed_stats": fixed,
            "latent_channels": enc.latent_channels, "embed_dim": enc.embed_dim, "patch_size": enc.patch_size}


def validate_groups(groups, enc=None) -> list[str]:
    groups = [g.strip() for g in (groups.split(",") if isinstance(groups, str) else groups) if g.strip()]
    if not groups:
        raise ConfigError("no feature groups requested")
    for g in groups:
        ok = g in BASE_GROUPS or g == "residual_raw" or any(
            g.startswith(p) and g[len(p):].isdigit() for p in ("cls_l", "pooled_l", "dino_l"))
        if not ok:
            raise ConfigError(f"unknown group {g!r}; expected {', '.join(BASE_GROUPS)}, residual_raw, "
                              "cls_l<i>, pooled_l<i> or dino_l<i>")
        if enc is not None and enc.residual is None and g in ("residual", "residual_raw"):
            raise ConfigError(f"group {g!r} needs an SVG checkpoint (--svg); this encoder is DINOv3-only")
    if enc is not None:
        bad = [i for i in layers_needed(groups) if i >= enc.backbone.depth]
        if bad:
            raise ConfigError(f"layer(s) {bad} do not exist in a {enc.backbone.depth}-block backbone")
    return list(dict.fromkeys(groups))


class _Items(torch.utils.data.Dataset):
    """Items [start, end) of a dataset -> (item, views [K,3,S,S] or None, failure reason or None)."""

    def __init__(self, ds, start, end, transform, views, view_seed, draft=None):
        self.ds, self.start, self.end = ds, start, end
        self.transform, self.views, self.view_seed, self.draft = transform, views, view_seed, draft

    def __len__(self):
        return self.end - self.start

    def __getitem__(self, k):
        i = self.start + k
        if self.draft == "bytes":  # device decoding: only read the file here
            from .data.gpu_decode import is_jpeg, read_bytes

            try:
                blob = read_bytes(self.ds.abspath(i))
            except OSError as e:
                return i, None, f"unreadable: {e}"
            if blob.numel() == 0:
                return i, None, "empty-file"
            if is_jpeg(blob):
                return i, blob, None
        return self._decode(i)

    def _decode(self, i):
        draft = self.draft if isinstance(self.draft, int) else None
        try:
            img = self.ds.load(i, draft=draft) if draft else self.ds.load(i)
            x = torch.stack([make_view(img, self.transform, v, self.view_seed, i) for v in range(self.views)])
            return i, x, None
        except DecodeError as e:
            return i, None, e.reason + (f": {e.detail}" if e.detail else "")
        except (OSError, ValueError) as e:
            return i, None, f"unreadable: {e}"


def _collate(batch):
    """Worker-side collation: the views of every decoded item stacked into ONE tensor (one shared-memory
    transfer per batch, not one per image), raw JPEG bytes kept as a list, failures as (item, reason)."""
    dense = [(i, x) for i, x, err in batch if err is None and x.is_floating_point()]
    blobs = [(i, x) for i, x, err in batch if err is None and not x.is_floating_point()]
    fails = [(i, err) for i, _, err in batch if err is not None]
    x = torch.cat([x for _, x in dense]) if dense else None
    return [i for i, _ in dense], x, blobs, fails, len(batch)


def _dist_info():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SVGFEAT_BACKEND") != "gloo" else "gloo"
        torch.distributed.init_process_group(backend)
        return torch.distributed.get_rank(), world
    return 0, 1


def _barrier(world):
    if world > 1:
        torch.distributed.barrier()


class _Encoding:
    """Runs the encoder on batches and returns the requested groups on CPU in the cache dtype."""

    def __init__(self, enc, groups, dtype, device, autocast: bool = True):
        self.enc, self.groups, self.dtype = enc, groups, DTYPES[dtype]
        self.device = torch.device(device)
        self.layers = layers_needed(groups)
        self.cuda = self.device.type == "cuda"
        self.autocast = self.cuda and autocast

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            f = self.enc.encode(x, layers=self.layers or None)
            out = {}
            for g in self.groups:
                if g == "residual_raw":
                    out[g] = self.enc.raw_residual(x)
                else:
                    out[g] = f.group(g)
        return {g: v.float().to(self.dtype).cpu() for g, v in out.items()}


def _fixed_stats_pass(enc, ds, n_items, transform, batch_size, workers, device, limit, progress) -> dict:
    """Alignment statistics over the first ``limit`` items (view 0), batch-size independent."""
    acc = AlignmentStats()
    n = min(n_items, limit or n_items)
    loader = torch.utils.data.DataLoader(_Items(ds, 0, n, transform, 1, 0), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    dev = torch.device(device)
    bar = _bar(n, "alignment stats", progress)
    with torch.no_grad():
        for _, x, _, _, count in loader:
            if x is not None:
                x = x.to(dev)
                out = enc.backbone(x)
                acc.update(out.patch.float(), enc.raw_residual(x).float())
            bar.update(count)
    bar.close()
    return acc.compute()


def _bar(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)


def _light_match(out: Path, request: dict, weights: dict) -> bool:
    """True when ``out`` is a complete cache made from the same weights/transform/groups/dataset."""
    if not (out / MANIFEST).exists():
        return False
    m = read_manifest(out)
    if not m.get("complete"):
        return False
    e = m["encoder"]
    same_w = all(e.get(k) == v for k, v in weights.items() if v is not None) and weights.get("model") in (
        None, e.get("model"))
    fields = ("transform", "groups", "dtype", "views", "dataset_fingerprint", "shard_size")
    return same_w and e.get("alignment") in (request["alignment"], None) and all(m.get(f) == request[f] for f in fields)


def extract(data, out, encoder=None, *, dinov3=None, svg=None, svg_config=None, model=None,
            groups=DEFAULT_GROUPS, size: int = 256, preset: str = "svg", dtype: str = "fp16",
            alignment: str = "batch", batch_size: int = 64, shard_size: int = 1024, workers: int = 0,
            device="cpu", limit: int | None = None, views: int = 1, view_seed: int = 0,
            fixed_stats_limit: int | None = None, overwrite: bool = False, progress: bool = True,
            fast_jpeg: bool = False, gpu_decode: bool = False, autocast: bool = True, protocol: str | None = None):
    """Extract features of ``data`` (a dataset spec or Dataset) into the cache directory ``out``.

    Returns the opened :class:`~svgfeat.cache.FeatureCache`. A complete cache made with the same
    encoder weights, transform, groups, dtype, views and file list is reused without running the
    encoder; an incomplete one is resumed; a mismatched one is refused (CacheError names the difference)
    unless ``overwrite``. ``fast_jpeg`` decodes JPEGs at reduced DCT scale (faster, approximate; recorded
    in the manifest's transform). ``gpu_decode`` decodes/resizes JPEG batches on ``device`` (nvJPEG on
    CUDA); views must then be 1. ``autocast``: bf16 autocast on CUDA (ignored on CPU). ``protocol``: the
    evaluation protocol that created the cache (recorded in the manifest; not compared on reuse).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if batch_size < 1 or shard_size < 1 or views < 1:
        raise ConfigError("batch_size, shard_size and views must be >= 1")
    out = Path(out)
    ds = open_dataset(data)
    n_items = len(ds) if limit is None else min(int(limit), len(ds))
    if n_items == 0:
        raise ConfigError(f"dataset {ds.spec} has no items")
    transform = Transform(preset, size)
    groups = validate_groups(groups)
    fingerprint = ds.fingerprint() if n_items == len(ds) else f"{ds.fingerprint()}[:{n_items}]"
    if gpu_decode and views != 1:
        raise ConfigError("gpu_decode supports views=1 only")
    tspec = dict(transform.spec(), fast_jpeg=bool(fast_jpeg), decoder="device" if gpu_decode else "pil")
    request = {"transform": tspec, "groups": None, "dtype": dtype, "views": views,
               "dataset_fingerprint": fingerprint, "shard_size": shard_size, "alignment": alignment}

    if encoder is None and not overwrite:
        from .checkpoints import sha256_file

        weights = {"model": model, "dinov3_sha256": sha256_file(dinov3) if dinov3 and Path(dinov3).exists() else None,
                   "svg_sha256": sha256_file(svg) if svg and Path(svg).exists() else None}
        light = dict(request)
        try:
            m = read_manifest(out) if (out / MANIFEST).exists() else None
        except CacheError:
            m = None
        if m is not None:
            light["groups"] = {g: m["groups"].get(g) for g in groups} if set(groups) == set(m["groups"]) else None
            if light["groups"] and _light_match(out, light, weights):
                return open_cache(out)

    if encoder is None:
        from .models.svg import load_encoder

        encoder = load_encoder(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model, alignment=alignment,
                               device=device)
    enc = encoder.to(device).eval()
    if enc.align is not None and enc.alignment != alignment:
        enc.set_alignment(alignment)
    groups = validate_groups(groups, enc)
    rank, world = _dist_info()

    # ---- existing cache: reuse, resume or refuse
    existing = read_manifest(out) if (out / MANIFEST).exists() else None
    if existing is not None and overwrite and rank == 0:
        shutil.rmtree(out)
        existing = None
    _barrier(world)
    if enc.alignment == "fixed" and not enc.align.has_fixed_stats:
        if existing is not None and existing["encoder"].get("fixed_stats"):
            enc.align.set_fixed_stats(existing["encoder"]["fixed_stats"])
        else:
            enc.align.set_fixed_stats(_fixed_stats_pass(enc, ds, n_items, transform, batch_size, workers,
                                                        device, fixed_stats_limit, progress and rank == 0))
    probe = _Encoding(enc, groups, dtype, device)(torch.zeros(1, 3, *_input_hw(transform, enc)))
    request["groups"] = {g: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).replace("torch.", "")}
                         for g, v in probe.items()}
    request["encoder"] = encoder_spec(enc)
    if existing is not None:
        diffs = request_diff(existing, request)
        if diffs:
            raise CacheError(f"{out} holds a different extraction; refusing to mix ({'; '.join(diffs)}). "
                             "Use another output directory or --overwrite.")
        if existing.get("complete"):
            return open_cache(out)

    num_shards = (n_items + shard_size - 1) // shard_size
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": "svgfeat-cache", "format_version": 1, "svgfeat_version": _version.__version__,
                    "created": (existing or {}).get("created") or datetime.now(timezone.utc).isoformat(),
                    **request, "provenance": _json_safe(enc.provenance), "view_seed": view_seed,
                    "dataset": {**ds.describe(), "num_items": n_items}, "num_shards": num_shards,
                    "complete": False}
        if protocol:
            manifest["protocol"] = protocol
        write_json_atomic(out / MANIFEST, manifest)
    _barrier(world)

    encode = _Encoding(enc, groups, dtype, device, autocast)
    mine = [s for s in range(num_shards) if s % world == rank]
    todo = [s for s in mine if not _shard_done(out, s)]
    bar = _bar(sum(min(shard_size, n_items - s * shard_size) for s in todo), "extract", progress and rank == 0)
    t0 = time.time()
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu" and workers > 0:
        # decoding workers need their own cores: idle OpenMP threads of the encoder spin and starve them
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    try:
        for s in todo:
            _write_one_shard(out, s, ds, s * shard_size, min((s + 1) * shard_size, n_items), transform, views,
                             view_seed, batch_size, workers, device, encode, bar,
                             "bytes" if gpu_decode else (transform.size if fast_jpeg else None))
    finally:
        torch.set_num_threads(threads)
    bar.close()
    _barrier(world)
    if rank == 0:
        _finalize(out, num_shards)
        m = read_manifest(out)
        if progress:
            n_fail = len(m["failures"])
            print(f"extracted {m['num_rows']} rows from {n_items} items into {out} "
                  f"({time.time() - t0:.1f}s){'; ' + str(n_fail) + ' file(s) failed' if n_fail else ''}")
    _barrier(world)
    return open_cache(out)


def _input_hw(transform, enc):
    s = transform.size if transform.preset != "none" else 16 * 4
    return (s, s)


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


def _shard_done(out: Path, s: int) -> bool:
    idx = out / shard_name(s).replace(".safetensors", ".json")
    f = out / shard_name(s)
    if not (idx.exists() and f.exists()):
        return False
    try:
        return json.loads(idx.read_text()).get("size") == f.stat().st_size
    except (json.JSONDecodeError, OSError):
        return False


def _write_one_shard(out, s, ds, start, end, transform, views, view_seed, batch_size, workers, device, encode,
                     bar, draft=None):
    loader = torch.utils.data.DataLoader(
        _Items(ds, start, end, transform, views, view_seed, draft), batch_size=max(1, batch_size // views),
        num_workers=workers, collate_fn=_collate, pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False)
    paths, labels, items, view_ids, failures, pending, chunks = [], [], [], [], [], [], []

    def flush(rows):
        x = torch.cat(rows)
        chunks.append(encode(x))

    for ids, x, blobs, fails, n in loader:
        rows = dict(zip(ids, x.split(views))) if x is not None else {}  # item -> [views, 3, S, S]
        if blobs:
            from .data.gpu_decode import decode_resize

            dec, bad = decode_resize([b for _, b in blobs], encode_size(transform), device)
            k = 0
            for m, (i, _) in enumerate(blobs):
                if m in bad:
                    fails.append((i, "truncated: device JPEG decode failed"))
                else:
                    rows[i], k = dec[k:k + 1], k + 1
        failures += [[ds.paths[i], err] for i, err in sorted(fails)]
        for i in sorted(rows):
            for v in range(views):
                paths.append(ds.paths[i])
                labels.append(int(ds.labels[i]))
                items.append(i)
                view_ids.append(v)
            pending.append(rows[i])
            while sum(len(p) for p in pending) >= batch_size:
                cat = torch.cat(pending)
                flush([cat[:batch_size]])
                pending = [cat[batch_size:]] if len(cat) > batch_size else []
        bar.update(n)
    if pending and sum(len(p) for p in pending):
        flush(pending)
    tensors = {g: torch.cat([c[g] for c in chunks]) for g in encode.groups} if chunks else {
        g: torch.zeros(0) for g in encode.groups}
    name = shard_name(s)
    digest = write_shard(out / name, tensors, {"shard": s, "items": [start, end]})
    index = {"shard": s, "items_range": [start, end], "rows": len(paths), "paths": paths, "labels": labels,
             "items": items, "views": view_ids, "failures": failures, "sha256": digest,
             "size": (out / name).stat().st_size}
    write_json_atomic(out / name.replace(".safetensors", ".json"), index)


def encode_size(transform) -> int:
    return transform.size


def _finalize(out: Path, num_shards: int) -> None:
    m = read_manifest(out)
    shards, failures, rows = [], [], 0
    for s in range(num_shards):
        idx_name = shard_name(s).replace(".safetensors", ".json")
        if not _shard_done(out, s):
            raise SvgfeatError(f"shard {s} of {out} is missing after extraction")
        idx = json.loads((out / idx_name).read_text())
        shards.append({"file": shard_name(s), "index": idx_name, "rows": idx["rows"], "sha256": idx["sha256"],
                       "items": idx["items_range"]})
        failures += idx["failures"]
        rows += idx["rows"]
    m.update(shards=shards, failures=failures, num_rows=rows, complete=True,
             finished=datetime.now(timezone.utc).isoformat())
    write_json_atomic(out / MANIFEST, m)


def verify_cache(path) -> list[str]:
    """Recompute every shard's sha256; returns a list of problems (empty when the cache is intact)."""
    m = read_manifest(path)
    problems = []
    for s in m.get("shards", []):
        f = Path(path) / s["file"]
        if not f.exists():
            problems.append(f"{s['file']}: missing")
        elif file_sha256(f) != s["sha256"]:
            problems.append(f"{s['file']}: checksum mismatch (file changed or corrupt)")
    if not m.get("complete"):
        problems.append("cache is incomplete (extraction interrupted)")
    return problems

