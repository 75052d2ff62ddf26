"""Resume and finish: which shards can be reused (re-hashed, not trusted by size), the final manifest.

A shard is reused only when its index says it holds exactly the expected items and the shard file's
size and sha256 match the index; anything else (truncated, flipped byte, deleted index, foreign file) is
redone. Rank 0 finalises once every rank has written or re-verified its own shards.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from ..cache.manifest import read_manifest, shard_name, write_json_atomic
from ..cache.shards import file_sha256
from ..errors import SvgfeatError
from .writer import index_name

MAX_INDEX_BYTES = 256 << 20


def _read_index(out: Path, s: int) -> dict | None:
    p = out / index_name(s)
    try:
        if p.is_symlink() or not p.is_file() or p.stat().st_size > MAX_INDEX_BYTES:
            return None
        idx = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return idx if isinstance(idx, dict) else None


def shard_reusable(out: Path, s: int, start: int, end: int) -> bool:
    """True when shard ``s`` on disk holds items [start, end) and its bytes match the recorded sha256."""
    idx = _read_index(out, s)
    if idx is None or idx.get("shard") != s or idx.get("items_range") != [start, end]:
        return False
    rows = idx.get("rows")
    if not isinstance(rows, int) or any(not isinstance(idx.get(k), list) or len(idx[k]) != rows
                                        for k in ("paths", "labels", "items", "views")):
        return False
    f = out / shard_name(s)
    try:
        if f.is_symlink() or not f.is_file() or f.stat().st_size != idx.get("size"):
            return False
        return file_sha256(f) == idx.get("sha256")
    except OSError:
        return False


def finalize(out: Path, num_shards: int) -> dict:
    """Write the complete manifest from the shard indexes (every shard was written or re-hashed this run)."""
    m = read_manifest(out)
    shards, failures, rows = [], [], 0
    for s in range(num_shards):
        idx = _read_index(out, s)
        f = out / shard_name(s)
        if idx is None or not f.is_file() or f.stat().st_size != idx.get("size"):
            raise SvgfeatError(f"shard {s} of {out} is missing or damaged after extraction")
        shards.append({"file": shard_name(s), "index": index_name(s), "rows": idx["rows"], "sha256": idx["sha256"],
                       "size": idx["size"], "items": idx["items_range"]})
        failures += idx["failures"]
        rows += idx["rows"]
    m.update(shards=shards, failures=failures, num_rows=rows, complete=True,
             finished=datetime.now(timezone.utc).isoformat())
    write_json_atomic(out / "manifest.json", m)
    return m


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



