"""Source fingerprints: per item (checked on every re-run and resume) and per source file (named on refusal).

An item's fingerprint is ``[size, mtime_ns]`` of the file that holds it (the image itself for folders and file
lists, the containing tar / parquet / arrow file for container sources), plus a blake2b of the item's bytes
when content hashing is asked for (``--hash-sources``). Extraction records them in each shard's index JSON
(memory stays bounded by the shard size); a later run compares them and re-extracts the shards holding items
that changed, so a cache never mixes old and new contents (:func:`changed_items`).
"""

from __future__ import annotations

import hashlib
import os

from ..errors import CacheError

HASH = "blake2b-128"


def content_hash(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def stat_fingerprint(path) -> list:
    """``[size, mtime_ns]`` of ``path``, or ``["missing", reason]`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError as e:
        return ["missing", e.strerror or type(e).__name__]
    return [int(st.st_size), int(st.st_mtime_ns)]


def item_fingerprint(ds, i: int, content: bool = False) -> list | None:
    """The fingerprint of item ``i`` of ``ds`` (None for embedded samples: they cannot change)."""
    fp = ds.item_stat(i)
    if fp is None or not content or fp[0] == "missing":
        return fp
    try:
        blob = ds.read_bytes(i)
    except (OSError, ValueError) as e:
        return fp + [f"unreadable: {e}"]
    return fp + [content_hash(blob)]


def _same(recorded, ds, i: int, content: bool) -> bool:
    current = ds.item_stat(i)
    if recorded is None or current is None:
        return recorded == current
    if not isinstance(recorded, list) or len(recorded) < 2 or current[0] == "missing" or recorded[0] != current[0]:
        return False  # size differs, a file is missing, or the record is damaged
    if len(recorded) >= 3 and (content or recorded[1] != current[1]):
        # a recorded content hash decides (a touched but unchanged file is not re-extracted)
        return item_fingerprint(ds, i, content=True)[2:3] == recorded[2:3]
    return recorded[1] == current[1]  # no hash recorded: size and mtime decide


def changed_items(recorded, ds, start: int, end: int, content: bool = False) -> list[int] | None:
    """Items in ``[start, end)`` whose source changed since ``recorded`` (a shard index's ``sources`` list),
    or None when nothing usable was recorded (a shard written before fingerprints: it cannot be trusted)."""
    if not isinstance(recorded, list) or len(recorded) != end - start:
        return None
    return [i for i, r in zip(range(start, end), recorded) if not _same(r, ds, i, content)]


def file_stats(paths, rows=None, root=None) -> list[dict]:
    """``[{"name", "size", "mtime_ns"[, "rows"]}]`` of a container source's files (recorded in the manifest;
    names relative to ``root``)."""
    out = []
    for k, p in enumerate(paths):
        fp = stat_fingerprint(p)
        e = {"name": os.path.relpath(p, root) if root else os.path.basename(p), "size": fp[0], "mtime_ns": fp[1] if fp[0] != "missing" else None}
        if rows is not None:
            e["rows"] = int(rows[k])
        out.append(e)
    return out


def source_differences(old: dict | None, new: dict) -> list[str]:
    """What differs between the source recorded in a manifest (``dataset`` block) and the one given now:
    kind, column mapping, and per file (added, removed, size, rows)."""
    old = old if isinstance(old, dict) else {}
    out = []
    if old.get("kind") != new.get("kind"):
        out.append(f"source kind: cache has {old.get('kind')!r}, given {new.get('kind')!r}")
    if "columns" in new and old.get("columns") != new.get("columns"):
        out.append(f"columns: cache has {old.get('columns')!r}, given {new.get('columns')!r}")
    of = {f.get("name"): f for f in old.get("files") or [] if isinstance(f, dict)}
    nf = {f["name"]: f for f in new.get("files") or []}
    if of or nf:
        gone, added = sorted(set(of) - set(nf)), sorted(set(nf) - set(of))
        if gone:
            out.append(f"{len(gone)} file(s) no longer given (first: {', '.join(gone[:3])})")
        if added:
            out.append(f"{len(added)} new file(s) (first: {', '.join(added[:3])})")
        for name in sorted(set(of) & set(nf)):
            for k in ("size", "rows"):
                if of[name].get(k) != nf[name].get(k):
                    out.append(f"{name}: {k} was {of[name].get(k)}, now {nf[name].get(k)}")
    if old.get("num_items") not in (None, new.get("num_items")) and not out:
        out.append(f"items: cache has {old.get('num_items')}, given {new.get('num_items')}")
    return out


def refuse_changed_source(out, existing: dict, request: dict, ds) -> None:
    """A source whose item list changed (the dataset fingerprint differs) is refused, naming the files that
    differ; same-list content changes are handled per item (re-extracted), not here."""
    if existing.get("dataset_fingerprint") == request.get("dataset_fingerprint"):
        return
    old, new = str(existing.get("dataset_fingerprint")), str(request.get("dataset_fingerprint"))
    if old.split("[:")[0] == new.split("[:")[0]:
        return  # same items, another --limit: the request comparison names it (dataset_fingerprint)
    diffs = source_differences(existing.get("dataset"), ds.describe())
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise CacheError(f"{out} was extracted from a different source ({shown}); refusing to mix. "
                         "Use another output directory or --overwrite.")
