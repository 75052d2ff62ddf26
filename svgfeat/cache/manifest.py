"""Cache manifest: provenance, layout and completeness of a feature cache directory.

Layout of a cache directory::

    manifest.json            # this manifest (written atomically; "complete": true at the end)
    shard-00000.safetensors  # groups of rows [items of shard 0]
    shard-00000.json         # that shard's sample index (paths, labels, item/view ids) + failures + sha256
    stats.json               # optional: per-channel statistics (svgfeat stats)
    .svgfeat.lock            # the writer lock (lock.py); svgfeat temp files are .<name>.tmp-<pid>
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .._version import __version__
from ..atomic import write_json_atomic  # noqa: F401  (historical import path)
from ..errors import CacheError
from .paths import contained, read_json
from .schema import manifest_problems

FORMAT = "svgfeat-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def read_manifest(root, validate: bool = True) -> dict:
    """The parsed manifest of cache folder ``root``; CacheError saying what is wrong when it is unreadable,
    not an svgfeat manifest, too new, or (``validate``) breaks the schema (see :mod:`.schema`)."""
    root = Path(root)
    p = root / MANIFEST
    if not os.path.lexists(p):
        raise CacheError(f"{root} is not a feature cache (no {MANIFEST})")
    m = read_json(contained(root, MANIFEST, "manifest"), "manifest")
    if not isinstance(m, dict):
        raise CacheError(f"{p}: corrupt manifest: a JSON {type(m).__name__}, expected an object")
    if m.get("format") != FORMAT:
        raise CacheError(f"{p}: not an svgfeat cache manifest (format={m.get('format')!r})")
    v = m.get("format_version", 0)
    if type(v) is not int:
        raise CacheError(f"{p}: format_version is {v!r}, expected an integer")
    if v > FORMAT_VERSION:
        raise CacheError(f"{root}: cache format {v} is newer than this svgfeat "
                         f"({__version__}) supports ({FORMAT_VERSION}); upgrade svgfeat")
    _check_counts(root, m)
    if validate:
        probs = manifest_problems(m)
        if probs:
            raise CacheError(f"{p}: corrupt manifest: " + "; ".join(probs[:6]))
    return m


def _check_counts(root: Path, m: dict) -> None:
    """Refuse at once a manifest listing more shards than its folder holds files, or a shard with more rows
    than its recorded byte size can hold (parsing and checking stay bounded by what exists on disk)."""
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards:
        return
    n_files = 0
    with os.scandir(root) as it:
        for _ in it:
            n_files += 1
            if n_files >= len(shards):
                break
    if n_files < len(shards):
        raise CacheError(f"{root / MANIFEST}: lists {len(shards)} shards but the folder holds only {n_files} "
                         "files; not a cache svgfeat wrote (refusing to read it)")
    groups = m.get("groups")
    row_bytes = 0
    if isinstance(groups, dict):
        from .stformat import _ITEMSIZE, MANIFEST_TO_ST

        for spec in groups.values():
            shape = spec.get("shape") if isinstance(spec, dict) else None
            st = MANIFEST_TO_ST.get(spec.get("dtype")) if isinstance(spec, dict) else None
            if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and st:
                row_bytes += math.prod(shape) * _ITEMSIZE[st]
    for i, e in enumerate(shards):
        if not isinstance(e, dict):
            continue
        rows, size = e.get("rows"), e.get("size")
        if type(rows) is int and type(size) is int and rows > 0 and rows * max(row_bytes, 1) > size:
            raise CacheError(f"{root / MANIFEST}: shards[{i}] lists {rows} rows, more than its {size} bytes can "
                             f"hold ({max(row_bytes, 1)} bytes a row); not a cache svgfeat wrote")


# fields that must agree between a request and an existing cache
REQUEST_FIELDS = ("encoder", "transform", "groups", "dtype", "views", "dataset_fingerprint", "shard_size")
ENCODER_FIELDS = ("model", "dinov3_sha256", "svg_sha256", "alignment", "fixed_stats", "latent_channels")


def _diff(a, b, prefix=""):
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        out.append(f"{prefix.rstrip('.')}: cache has {a!r}, requested {b!r}")
    return out


def request_diff(existing: dict, request: dict) -> list[str]:
    """Human-readable differences between an existing cache's request block and a new one."""
    return _diff({k: existing.get(k) for k in REQUEST_FIELDS}, {k: request.get(k) for k in REQUEST_FIELDS})


def check_compatible(spec_a: dict, spec_b: dict, what: str = "encoder") -> None:
    """Raise CacheError naming the differing fields of two encoder specs (model, weight hashes, alignment)."""
    diffs = _diff({k: spec_a.get(k) for k in ENCODER_FIELDS}, {k: spec_b.get(k) for k in ENCODER_FIELDS})
    if diffs:
        raise CacheError(f"{what} mismatch: " + "; ".join(diffs))
