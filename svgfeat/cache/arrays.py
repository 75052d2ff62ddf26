"""Bring your own features: :func:`from_arrays` writes arrays as a real svgfeat cache (manifest, shards,
indexes, checksums), so features from any model can use every head, and scale tests need no encoder.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._version import __version__
from ..atomic import write_json_atomic
from ..errors import CacheError, ConfigError
from .integrity import read_index
from .lock import cache_lock
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, shard_name
from .owned import looks_like_cache, refuse_foreign_cache_names, remove_cache
from .shards import write_shard

_STORE = {"float16": "float16", "float32": "float32", "float64": "float32", "bfloat16": "bfloat16"}
_DTYPE_NAME = {"float16": "fp16", "float32": "fp32", "bfloat16": "bf16"}


def _dtype_name(a) -> str:
    return str(a.dtype).replace("torch.", "")


def _stored(name: str, a, dtype) -> str:
    want = str(dtype).replace("torch.", "") if dtype is not None else _STORE.get(_dtype_name(a))
    if want not in ("float16", "float32", "bfloat16"):
        raise ConfigError(f"groups[{name!r}] has dtype {_dtype_name(a)}; expected a float array "
                          "(float16, bfloat16, float32 or float64) or dtype='float16'/'float32'/'bfloat16'")
    return want


def _block(a, lo: int, hi: int, stored: str, name: str):
    """Rows [lo, hi) of ``a`` in the stored dtype (numpy, or torch for bf16), checked finite."""
    import torch

    x = a[lo:hi]
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.bfloat16) if stored == "bfloat16" else x.float().numpy().astype(stored, copy=False) \
            if x.dtype != getattr(torch, stored) else x.numpy()
    else:
        x = np.asarray(x)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16) \
            if stored == "bfloat16" else np.ascontiguousarray(x, dtype=stored)
    v = x.float().numpy() if isinstance(x, torch.Tensor) else x
    if not np.isfinite(v).all():
        bad = int(np.argmax(~np.isfinite(v.reshape(len(v), -1)).all(axis=1)))
        raise ConfigError(f"groups[{name!r}] row {lo + bad} holds non-finite values (NaN/Inf)")
    return x


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if (out / MANIFEST).exists() or (out / MANIFEST).is_symlink():
        if not looks_like_cache(out):
            raise CacheError(f"{out} holds a {MANIFEST} that is not an svgfeat cache; refusing to overwrite it")
        if not overwrite:
            raise CacheError(f"{out} already holds a feature cache; pass overwrite=True to replace it")
        remove_cache(out)
    refuse_foreign_cache_names(out)


def from_arrays(out, groups: dict, labels=None, classes=None, paths=None, shard_size: int = 1024, *,
                overwrite: bool = False, encoder: dict | None = None, transform: dict | None = None,
                dtype=None, durable: bool = True):
    """Write ``groups`` {name: array [N, ...]} as a feature cache at ``out`` and open it.

    Arrays may be numpy arrays, ``np.memmap`` (larger than RAM: written shard by shard) or torch tensors;
    float64 is stored as float32, ``dtype`` forces one stored dtype. ``labels``: ints [N] (-1: none),
    ``classes``: their names, ``paths``: a name per row (default ``row-<i>``). ``encoder``/``transform``:
    fields recorded in the manifest (``encoder={"model": "my-clip"}``; heads compare them between caches).
    ``durable=False`` skips the per-file fsync (scratch caches: much faster with thousands of shards).
    Written under the cache lock; an existing cache is replaced only with ``overwrite`` and only if svgfeat
    wrote it; unrelated files in ``out`` are left alone.
    """
    from .reader import open_cache

    if not isinstance(groups, dict) or not groups:
        raise ConfigError("groups must be a non-empty dict {name: array [N, ...]}")
    if int(shard_size) < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    shard_size = int(shard_size)
    n = None
    spec = {}
    for g, a in groups.items():
        if not isinstance(g, str) or not g or g.startswith("__") or not g.isprintable():
            raise ConfigError(f"group name {g!r}: expected a plain name such as 'cls'")
        if not hasattr(a, "shape") or len(a.shape) < 1:
            raise ConfigError(f"groups[{g!r}] must be an array with a leading row axis, got {type(a).__name__}")
        if n is None:
            n = int(a.shape[0])
        elif int(a.shape[0]) != n:
            raise ConfigError(f"groups[{g!r}] has {a.shape[0]} rows, expected {n} like the other groups")
        spec[g] = {"shape": [int(d) for d in a.shape[1:]], "dtype": _stored(g, a, dtype)}
    if n == 0:
        raise ConfigError("groups have 0 rows; a cache needs at least one")
    lab = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels)
    if lab.shape != (n,) or not (lab.size == 0 or np.issubdtype(lab.dtype, np.integer)):
        raise ConfigError(f"labels must be {n} integers, got shape {lab.shape} dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    classes = [str(c) for c in classes] if classes is not None else []
    if n and (lab.min() < -1 or (classes and lab.max() >= len(classes))):
        raise ConfigError(f"labels must lie in [-1, {len(classes) - 1 if classes else 'inf'}], got "
                          f"[{lab.min()}, {lab.max()}]")
    names = [f"row-{i}" for i in range(n)] if paths is None else [str(p) for p in paths]
    if len(names) != n:
        raise ConfigError(f"paths has {len(names)} entries, expected {n}")

    out = Path(out)
    num_shards = (n + shard_size - 1) // shard_size
    dtypes = {s["dtype"] for s in spec.values()}
    enc = {"model": "external", "external": True, "dinov3_sha256": None, "svg_sha256": None, "alignment": None,
           "fixed_stats": None, "latent_channels": None, "embed_dim": None, "patch_size": None, **(encoder or {})}
    now = datetime.now(timezone.utc).isoformat()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "svgfeat_version": __version__,
                "created": now, "encoder": enc, "transform": {"preset": "external", "size": None, **(transform or {})},
                "groups": spec, "dtype": _DTYPE_NAME[dtypes.pop()] if len(dtypes) == 1 else "mixed", "views": 1,
                "view_seed": 0, "shard_size": shard_size, "alignment": enc.get("alignment"),
                "provenance": {"source": "svgfeat.cache.from_arrays"},
                "dataset": {"kind": "arrays", "spec": "arrays", "root": "", "classes": classes, "num_items": n},
                "num_shards": num_shards, "complete": False}
    with cache_lock(out, {"cmd": "from_arrays", "rows": n, "groups": ",".join(spec)}):
        _prepare_folder(out, overwrite)
        write_json_atomic(out / MANIFEST, manifest)
        shards, fp = [], hashlib.sha256()
        for s in range(num_shards):
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            name = shard_name(s)
            fast: dict = {}
            digest = write_shard(out / name, {g: _block(a, lo, hi, spec[g]["dtype"], g) for g, a in groups.items()},
                                 {"shard": s, "items": [lo, hi]}, durable, fast=fast)
            size = (out / name).stat().st_size
            idx_name = name.replace(".safetensors", ".json")
            write_json_atomic(out / idx_name, {
                "shard": s, "items_range": [lo, hi], "rows": hi - lo, "paths": names[lo:hi],
                "labels": lab[lo:hi].tolist(), "items": list(range(lo, hi)), "views": [0] * (hi - lo),
                "failures": [], "sha256": digest, "xxh3": fast, "size": size}, durable)
            shards.append({"file": name, "index": idx_name, "rows": hi - lo, "sha256": digest, "size": size,
                           "items": [lo, hi], "index_xxh3": read_index(out, idx_name)[1]})
            fp.update(digest.encode())
        manifest.update(shards=shards, failures=[], num_rows=n, complete=True, dataset_fingerprint=fp.hexdigest(),
                        finished=datetime.now(timezone.utc).isoformat())
        write_json_atomic(out / MANIFEST, manifest)
    return open_cache(out)
