"""``svgfeat cache verify``: every check a cache can fail, as a list of readable problems.

Schema, completeness, every shard present / inside the folder / a regular file / the right size, its
safetensors header against the manifest's groups and rows, every shard index present and consistent
(rows, paths, labels, checksum), the sha256 of every shard (``deep``), and NaN/Inf values with their row
(always, ``--quick`` included). Only regular files inside the cache folder are ever opened, so it cannot hang on a FIFO or
a device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CacheError
from .integrity import ShardInfo, index_problems, shard_problems
from .manifest import MANIFEST, read_manifest
from .pool import ShardHandle
from .schema import manifest_problems

MAX_ROWS_LISTED = 5


def _nonfinite(info: ShardInfo, offset: int) -> list[str]:
    out = []
    h = ShardHandle(info, verify=False)  # the sha256 is checked by the caller
    try:
        for g in sorted(info.tensors):
            t = info.tensors[g]
            n = t["shape"][0] if t["shape"] else 0
            if n == 0 or t["end"] == t["begin"]:
                continue
            bad_rows: list[int] = []

            def check(block, first, bad_rows=bad_rows):
                if block.dtype.kind == "f" and not np.isfinite(block).all():
                    bad = np.nonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0]
                    bad_rows.extend(int(first) + int(k) for k in bad)

            buf_rows = max(1, (32 << 20) // max(1, (t["end"] - t["begin"]) // n))
            for a in range(0, n, buf_rows):
                b = min(n, a + buf_rows)
                dt = np.float32 if t["dtype"] == "BF16" else None
                buf = np.empty((b - a, *t["shape"][1:]), dtype=dt or _np_dtype(t["dtype"]))
                h.read_into(g, a, b, buf, check)
            if bad_rows:
                shown = ", ".join(f"{r} (cache row {offset + r})" for r in bad_rows[:MAX_ROWS_LISTED])
                more = f" and {len(bad_rows) - MAX_ROWS_LISTED} more" if len(bad_rows) > MAX_ROWS_LISTED else ""
                out.append(f"{info.path.name}: group {g!r} has non-finite values (NaN/Inf) in row {shown}{more}")
    finally:
        h.close()
    return out


def _np_dtype(st: str):
    from .stformat import ST_DTYPES

    return ST_DTYPES[st][0]


def verify_cache(path, deep: bool = True) -> list[str]:
    """Problems of the cache at ``path`` (empty list: intact): schema, sizes, headers (shapes, dtypes, rows)
    against the manifest, indexes and their checksums, every value scanned for NaN/Inf; ``deep`` also
    recomputes every shard's sha256. CacheError only when ``path`` is not a cache at all (no manifest)."""
    root = Path(path)
    if not root.is_dir():
        raise CacheError(f"feature cache not found: {root} (expected a folder)")
    try:
        m = read_manifest(root, validate=False)
    except CacheError as e:
        if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
            raise
        return [str(e)]
    problems = manifest_problems(m)
    if problems:
        return [f"{MANIFEST}: {p}" for p in problems]
    if not m.get("complete"):
        problems.append("cache is incomplete (extraction interrupted); rerun the same `svgfeat extract` command")
    shards = m.get("shards") or []
    classes = m["dataset"].get("classes") or []
    failures = 0
    offset = 0
    for s in shards:
        infos: list[ShardInfo] = []
        ip, idx = index_problems(root, s)
        entry = dict(s, xxh3=idx.get("xxh3")) if idx is not None else s
        sp = shard_problems(root, entry, m["groups"], deep=deep, _info=infos)
        problems += sp + ip
        if idx is not None:
            failures += len(idx.get("failures") or [])
            if classes:
                bad = [x for x in idx["labels"] if not -1 <= x < len(classes)]
                if bad:
                    problems.append(f"{s['index']}: label {bad[0]} is outside the {len(classes)} classes")
        if infos:  # the header parsed (offsets consistent with the file): scan the values (also quick)
            problems += _nonfinite(infos[0], offset)
        offset += s["rows"]
    if m.get("complete") and isinstance(m.get("failures"), list) and not any("index" in p for p in problems):
        if len(m["failures"]) != failures:
            problems.append(f"{MANIFEST}: lists {len(m['failures'])} failures, the shard indexes {failures}")
    return problems
