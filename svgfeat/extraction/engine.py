"""``extract()``: dataset -> encoder -> feature cache. Resumable, shard-atomic, ``torchrun``-aware.

Shard ``s`` always holds dataset items ``[s*S, (s+1)*S)`` (S = ``shard_size``), whatever the number of
processes: rank r of W writes the shards with ``s % W == r``, rank 0 writes the manifest. Rows inside a
shard are encoded in consecutive batches of ``batch_size`` rows, so a resumed or multi-process run is
identical to an uninterrupted single-process run.

Pipeline per rank: one persistent loader over all its shards (:mod:`.loader`) -> the encoder step on the
device (:mod:`.encode`) -> a background shard writer (:mod:`.writer`). The cache lock is held for the
whole run (:mod:`.output`); resume re-hashes the shards it reuses (:mod:`.resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import _version
from .. import distributed as D
from ..atomic import write_json_atomic
from ..cache.manifest import MANIFEST, read_manifest
from ..cache.owned import refuse_foreign_cache_names
from ..cache.reader import open_cache
from ..data.fingerprint import refuse_changed_source
from ..errors import CacheError, ConfigError
from . import output
from .encode import Encoding, fixed_stats_pass
from .loader import ShardPlan, first_decodable_hw, make_loader
from .request import (
    DEFAULT_GROUPS,
    Options,
    base_request,
    encoder_spec,
    light_match,
    numerics,
    refuse_mismatch,
    requested_weights,
    throughput_record,
    validate_groups,
)
from .resume import finalize, shard_reusable
from .writer import ShardJob, ShardWriter


def extract(data, out, encoder=None, *, dinov3=None, svg=None, svg_config=None, model=None,
            groups=DEFAULT_GROUPS, size: int = 256, preset: str = "svg", dtype: str = "fp16",
            alignment: str = "batch", batch_size: int = 64, shard_size: int = 1024, workers: int = 0,
            device="cpu", limit: int | None = None, views: int = 1, view_seed: int = 0,
            fixed_stats_limit: int | None = None, overwrite: bool = False, progress: bool = True,
            fast_jpeg: bool = False, gpu_decode: bool = False, precision: str = "fp32",
            allow_inside_input: bool = False, protocol: str | None = None, compile: bool = False,
            channels_last: bool | None = None, prefetch: int = 4, hash_sources: bool = False,
            format: str | None = None):
    """Extract features of ``data`` (a dataset spec or Dataset) into the cache directory ``out``.

    Returns the opened :class:`~svgfeat.cache.FeatureCache`. A complete cache made with the same request
    (encoder weights, transform, groups, dtype, views, file list, precision) is reused without running the
    encoder; an incomplete one is resumed (reused shards are re-hashed; damaged ones are redone); a
    mismatched one is refused (CacheError names the difference) unless ``overwrite``, which removes only
    the files svgfeat wrote. ``precision``: "fp32" (default) or "bf16" autocast. ``fast_jpeg`` decodes JPEGs
    at reduced DCT scale (approximate). ``gpu_decode`` decodes JPEG batches on ``device`` (nvJPEG on CUDA)
    with the geometry of the requested preset; views must then be 1. ``out`` equal to or inside the input
    folder is refused unless ``allow_inside_input``. ``protocol``: the evaluation protocol that created the
    cache (recorded in the manifest; not compared on reuse). Throughput knobs, recorded in the manifest's
    ``throughput`` block and not compared on reuse: ``compile`` (torch.compile of the encoder forward, equal
    to eager within 1e-5 in fp32), ``channels_last`` (None: on CUDA only), ``prefetch`` (batches decoded
    ahead per loader worker). ``data`` may be any :func:`svgfeat.open_dataset`
    source (``format`` overrides its detection). Every item's source fingerprint (size + mtime, plus a content
    hash with ``hash_sources``) is recorded per shard and checked on every re-run: shards holding changed
    items are re-extracted, so a cache never mixes old and new contents; a source whose item list changed is
    refused with the differing files named.
    """
    opts = Options(groups=tuple(validate_groups(groups)), size=size, preset=preset, dtype=dtype,
                   alignment=alignment, batch_size=batch_size, shard_size=shard_size, workers=workers,
                   device=str(device), limit=limit, views=views, view_seed=view_seed,
                   fixed_stats_limit=fixed_stats_limit, precision=precision, fast_jpeg=fast_jpeg,
                   gpu_decode=gpu_decode, compile=compile, channels_last=channels_last, prefetch=prefetch,
                   hash_sources=hash_sources)
    from ..data import open_dataset

    out = Path(out)
    ds = open_dataset(data, format=format)
    output.check_not_inside_input(out, ds, allow_inside_input)
    n_items = len(ds) if limit is None else min(int(limit), len(ds))
    if n_items == 0:
        raise ConfigError(f"dataset {ds.spec} has no items")
    request = base_request(ds, n_items, opts)
    if encoder is None:
        request["weights"] = requested_weights(model, dinov3, svg, svg_config)
    if encoder is None and not overwrite:
        cache = _reuse_without_encoder(out, request, opts, ds)
        if cache is not None:
            return cache
    info, dev = D.setup(device)
    try:
        if encoder is None:
            from ..models.build import load_encoder

            encoder = load_encoder(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model, alignment=alignment,
                                   device=dev)
            _record_config(encoder, svg_config, request.get("weights"))
        enc = opts.numerics.to_device(encoder, dev).eval()  # (mps: no float64 buffers)
        if enc.align is not None and enc.alignment != alignment:
            enc.set_alignment(alignment)
        groups = validate_groups(opts.groups, enc)
        owner = {"size": opts.size, "preset": opts.preset, "groups": ",".join(groups), "precision": opts.precision}
        with _sigterm_as_interrupt(), output.writer_lock(out, info, owner):
            return _run_locked(out, ds, n_items, enc, groups, opts, request, info, dev, overwrite, progress,
                               protocol)
    finally:
        D.teardown(info)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread (as Ctrl-C does), so that every ``finally`` runs:
    the loader's workers are stopped, finished shards stay, the lock is released. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop_workers(batches) -> None:
    """Stop the DataLoader worker processes of iterator ``batches`` now (not at garbage collection)."""
    stop = getattr(batches, "_shutdown_workers", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def _record_config(enc, svg_config, weights) -> None:
    """Record a local ``svg_config`` file in the provenance (the weights already are): search/serve rebuild
    the encoder from the cache's provenance."""
    if svg_config is not None and "svg_config" not in (enc.provenance or {}) and Path(str(svg_config)).is_file():
        enc.provenance = {**(enc.provenance or {}), "svg_config": {
            "path": str(Path(svg_config).resolve()), "sha256": (weights or {}).get("svg_config_sha256")}}


def _reuse_without_encoder(out, request, opts, ds):
    """The complete cache at ``out`` when it matches exactly without building the encoder (weights hashed
    only, see :func:`.request.light_match`); None sends the run to the full check."""
    if D.env_ranks()[1] > 1 or not (out / MANIFEST).exists():
        return None  # under torchrun the ranks decide together (after setup)
    try:
        m = read_manifest(out)
    except CacheError:
        return None
    mg = m.get("groups")
    if not isinstance(mg, dict) or set(opts.groups) != set(mg):
        return None
    light = dict(request, groups={g: mg.get(g) for g in opts.groups})
    if light_match(m, light) and _intact(out, m, D.DistInfo(), None, ds, opts.hash_sources):
        return open_cache(out)
    return None


def _intact(out, m: dict, info: D.DistInfo, dev, ds, hash_sources: bool = False) -> bool:
    """Every shard of complete cache ``m`` re-hashed against its index and its items' sources unchanged
    (split over ranks)."""
    shards = m.get("shards")
    if not isinstance(shards, list) or len(shards) != m.get("num_shards"):
        return False
    bad = 0
    for s, e in enumerate(shards):
        if s % info.world == info.rank:
            items = e.get("items") if isinstance(e, dict) else None
            ok = isinstance(items, list) and len(items) == 2 and shard_reusable(out, s, *items, m.get("groups"), ds,
                                                                                 hash_sources)
            bad += not ok
    if info.distributed:
        bad = int(D.all_reduce_sum(torch.tensor([bad], device=dev), info).item())
    return bad == 0


def _run_locked(out, ds, n_items, enc, groups, opts, request, info, dev, overwrite, progress, protocol=None):
    existing = read_manifest(out) if (out / MANIFEST).exists() else None
    if existing is not None and overwrite:
        if info.is_main:
            output.remove_previous(out)
        existing = None
    if existing is None:  # a user's own shard-00000.safetensors is never replaced, --overwrite or not
        refuse_foreign_cache_names(out)
    D.barrier(info)
    transform = opts.transform
    hw = (transform.size, transform.size)
    if transform.preset == "none":  # the first decodable image fixes the size; others of another size fail
        hw = first_decodable_hw(ds, n_items, transform) or (64, 64)
        request = dict(request, transform=dict(request["transform"], hw=list(hw)))
        opts = dataclasses.replace(opts, expect_hw=tuple(hw))
    if enc.alignment == "fixed" and not enc.align.has_fixed_stats:
        if existing is not None and (existing.get("encoder") or {}).get("fixed_stats"):
            enc.align.set_fixed_stats(existing["encoder"]["fixed_stats"])
        else:
            enc.align.set_fixed_stats(_fixed_stats(enc, ds, n_items, opts, dev, progress and info.is_main))
    encode = Encoding(enc, groups, opts.dtype, dev, opts.numerics, compile=opts.compile,
                      channels_last=opts.channels_last)
    request = dict(request, groups=encode.probe_groups(hw), encoder=encoder_spec(enc))
    if existing is not None:
        refuse_changed_source(out, existing, request, ds)
        refuse_mismatch(out, existing, request)
        if existing.get("complete") and _intact(out, existing, info, dev, ds, opts.hash_sources):
            return open_cache(out)  # else: a damaged complete cache is repaired like a resume

    num_shards = (n_items + opts.shard_size - 1) // opts.shard_size
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": "svgfeat-cache", "format_version": 1, "svgfeat_version": _version.__version__,
                    "created": (existing or {}).get("created") or datetime.now(timezone.utc).isoformat(),
                    **request, "numerics": numerics(dev, opts.numerics),
                    "throughput": throughput_record(opts, encode),
                    "provenance": _json_safe(enc.provenance), "view_seed": opts.view_seed,
                    "dataset": {**ds.describe(), "num_items": n_items}, "num_shards": num_shards,
                    "complete": False}
        if protocol:
            manifest["protocol"] = protocol
        write_json_atomic(out / MANIFEST, manifest)
    D.barrier(info)

    S = opts.shard_size
    mine = [(s, s * S, min((s + 1) * S, n_items)) for s in range(num_shards) if s % info.world == info.rank]
    changed = []
    todo = [t for t in mine if not shard_reusable(out, *t, request["groups"], ds, opts.hash_sources, changed)]
    if changed and progress:
        print(f"note: {len(changed)} item(s) changed since they were extracted (first: "
              f"{', '.join(ds.paths[i] for i in changed[:3])}); re-extracting the shard(s) that hold them")
    t0 = time.time()
    run_shards(out, ds, todo, encode, opts, progress and info.is_main)
    D.barrier(info)
    if info.is_main:
        m = finalize(out, num_shards)
        if progress:
            n_fail = len(m["failures"])
            print(f"extracted {m['num_rows']} rows from {n_items} items into {out} "
                  f"({time.time() - t0:.1f}s){'; ' + str(n_fail) + ' file(s) failed' if n_fail else ''}")
    D.barrier(info)
    return open_cache(out)


def _fixed_stats(enc, ds, n_items, opts, dev, progress) -> dict:
    """Alignment statistics over the first ``fixed_stats_limit`` items (view 0), batch-size independent."""
    n = min(n_items, opts.fixed_stats_limit or n_items)
    plan = ShardPlan([(0, 0, n)], opts.batch_size)
    loader = make_loader(ds, plan, opts.transform, 1, 0, opts.workers, expect_hw=opts.expect_hw,
                         prefetch=opts.prefetch)
    bar = _bar(n, "alignment stats", progress)

    def batches():
        for _, x, _, _, count, _ in loader:
            if x is not None:
                yield x
            bar.update(count)

    stats = fixed_stats_pass(enc, batches(), dev, opts.precision)
    bar.close()
    return stats


class _ShardAssembly:
    """Rows of one shard in item order, encoded in consecutive batches of ``batch_size`` rows."""

    def __init__(self, s, start, end, ds, encode, batch_size, views):
        self.job = ShardJob(s, (start, end), encode.groups)
        self.ds, self.encode, self.B, self.views = ds, encode, batch_size, views
        self.pending, self.sources = [], {}

    def add(self, rows: dict, fails: list, sources: dict) -> None:
        """rows: item -> [views, 3, S, S] (on the device); fails: [(item, reason)]; sources: item -> the
        source fingerprint taken when the item was read."""
        j, ds = self.job, self.ds
        self.sources.update(sources)
        j.failures += [[ds.paths[i], err] for i, err in sorted(fails)]
        for i in sorted(rows):
            for v in range(self.views):
                j.paths.append(ds.paths[i])
                j.labels.append(int(ds.labels[i]))
                j.item_ids.append(i)
                j.views.append(v)
            self.pending.append(rows[i])
            while sum(len(p) for p in self.pending) >= self.B:
                cat = torch.cat(self.pending)
                j.chunks.append(self.encode(cat[:self.B]))
                self.pending = [cat[self.B:]] if len(cat) > self.B else []

    def finish(self) -> ShardJob:
        a, b = self.job.items
        assert sorted(self.sources) == list(range(a, b)), "every item of a shard passes the loader once"
        self.job.sources = [self.sources[i] for i in range(a, b)]
        if self.pending and sum(len(p) for p in self.pending):
            with self.encode.stage.scope():
                self.job.chunks.append(self.encode(torch.cat(self.pending)))
        self.pending = []
        return self.job


def run_shards(out, ds, todo, encode, opts: Options, progress: bool) -> None:
    """Encode and write the shards ``todo`` [(s, start, end)] of this rank (one loader, background writer)."""
    if not todo:
        return
    dev = encode.device
    plan = ShardPlan(todo, max(1, opts.batch_size // opts.views))
    loader = make_loader(ds, plan, opts.transform, opts.views, opts.view_seed, opts.workers, opts.draft,
                         expect_hw=opts.expect_hw, prefetch=opts.prefetch, hash_sources=opts.hash_sources)
    bounds = {s: (a, b) for s, a, b in todo}
    bar = _bar(sum(b - a for _, a, b in todo), "extract", progress)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and opts.workers > 0:
        # decoding workers need their own cores: idle OpenMP threads of the encoder spin and starve them
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - opts.workers)))
    writer = ShardWriter(out)
    ok = False
    batches = iter(loader)
    try:
        shard, stage = None, encode.stage
        for (s, _, last), (ids, x, blobs, fails, n, sources) in zip(plan.steps(), batches):
            if shard is None:
                shard = _ShardAssembly(s, *bounds[s], ds, encode, opts.batch_size, opts.views)
            with stage.scope():  # every device op of this step: the stage's device and stream
                rows = dict(zip(ids, stage.to_device(x).split(opts.views))) if x is not None else {}
                if blobs:
                    rows.update(_device_decode(blobs, fails, opts.transform, dev))
                shard.add(rows, fails, sources)
            bar.update(n)
            if last:
                writer.submit(shard.finish())
                shard = None
        ok = True
    finally:
        _stop_workers(batches)
        torch.set_num_threads(threads)
        try:
            encode.close()  # every staged result copied out of the ring, the stream drained
        finally:
            writer.close(raise_errors=ok)
            bar.close()


def _device_decode(blobs, fails, transform, dev) -> dict:
    from ..data.gpu_decode import decode_transform

    dec, bad = decode_transform([b for _, b in blobs], transform, dev)
    rows, k = {}, 0
    for m, (i, _) in enumerate(blobs):
        if m in bad:
            fails.append((i, bad[m]))
        else:
            rows[i], k = dec[k:k + 1], k + 1
    return rows


def _bar(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))
