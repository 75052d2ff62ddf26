"""Resume and finish: which shards can be reused (re-hashed, not trusted by size), the final manifest.

A shard is reused only when its index says it holds exactly the expected items, the source of every one of
its items is unchanged since it was written (the per-item fingerprints of :mod:`svgfeat.data.fingerprint`),
and the shard file's size and sha256 match the index; anything else (an image changed after extraction or
between an interrupted run and its resume, truncated, flipped byte, deleted index, foreign file) is redone. Rank 0 finalises once every rank has written or re-verified its own shards.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_json_atomic
from ..cache.integrity import index_problems, read_index, shard_problems
from ..cache.manifest import read_manifest, shard_name
from ..errors import CacheError, SvgfeatError
from .writer import index_name


def _read_index(out: Path, s: int) -> dict | None:
    """Shard ``s``'s index, with the fast hash of its bytes as ``"_index_xxh3"`` (None: unreadable)."""
    try:
        idx, digest = read_index(out, index_name(s))
    except CacheError:
        return None
    return dict(idx, _index_xxh3=digest) if isinstance(idx, dict) else None


def shard_reusable(out: Path, s: int, start: int, end: int, groups: dict | None = None, ds=None,
                   hash_sources: bool = False, changed: list | None = None) -> bool:
    """True when shard ``s`` on disk holds items [start, end), (given ``ds``) none of their sources changed,
    its header matches ``groups`` and its bytes match the recorded sha256 (re-hashed: never trusted by size).
    Items whose source changed are appended to ``changed``."""
    idx = _read_index(out, s)
    if idx is None or idx.get("shard") != s or idx.get("items_range") != [start, end]:
        return False
    if ds is not None:
        from ..data.fingerprint import changed_items

        stale = changed_items(idx.get("sources"), ds, start, end, hash_sources)
        if stale is None or stale:
            if changed is not None:
                changed += stale or []
            return False
    entry = {"file": shard_name(s), "index": index_name(s), "rows": idx.get("rows"), "sha256": idx.get("sha256"),
             "size": idx.get("size"), "xxh3": idx.get("xxh3")}
    if not isinstance(entry["rows"], int) or not isinstance(entry["size"], int):
        return False
    if shard_problems(out, entry, groups, deep=True):
        return False
    return not index_problems(out, entry)[0]


def finalize(out: Path, num_shards: int) -> dict:
    """Write the complete manifest from the shard indexes (every shard was written or re-hashed this run)."""
    m = read_manifest(out)
    shards, failures, rows = [], [], 0
    for s in range(num_shards):
        idx = _read_index(out, s)
        f = out / shard_name(s)
        if idx is None or f.is_symlink() or not f.is_file() or f.stat().st_size != idx.get("size"):
            raise SvgfeatError(f"shard {s} of {out} is missing or damaged after extraction")
        entry = {"file": shard_name(s), "index": index_name(s), "rows": idx["rows"], "sha256": idx["sha256"],
                 "size": idx["size"], "items": idx["items_range"], "index_xxh3": idx["_index_xxh3"]}
        shards.append(entry)
        failures += idx["failures"]
        rows += idx["rows"]
    m.update(shards=shards, failures=failures, num_rows=rows, complete=True,
             finished=datetime.now(timezone.utc).isoformat())
    write_json_atomic(out / "manifest.json", m)
    return m
