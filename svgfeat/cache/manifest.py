"""Cache manifest: provenance, layout and completeness of a feature cache directory.

Layout of a cache directory::

    manifest.json            # this manifest (written atomically; "complete": true at the end)
    shard-00000.safetensors  # groups of rows [items of shard 0]
    shard-00000.json         # that shard's sample index (paths, labels, item/view ids) + failures + sha256
    stats.json               # optional: per-channel statistics (svgfeat stats)
    .svgfeat.lock            # the writer lock (lock.py); svgfeat temp files are .<name>.tmp-<pid>
"""

from __future__ import annotations

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
    if validate:
        probs = manifest_problems(m)
        if probs:
            raise CacheError(f"{p}: corrupt manifest: " + "; ".join(probs[:6]))
    return m


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
