"""Manifest schema: what a readable cache manifest must hold, with problems that say what is wrong."""

from __future__ import annotations

from .stformat import MANIFEST_TO_ST

_HEX = set("0123456789abcdef")


def _is_int(v) -> bool:
    return type(v) is int


def _is_hex16(v) -> bool:
    return isinstance(v, str) and len(v) == 16 and set(v) <= _HEX


def _shard_problems(i: int, s) -> list[str]:
    where = f"shards[{i}]"
    if not isinstance(s, dict):
        return [f"{where} is a {type(s).__name__}, expected an object with file/index/rows/sha256"]
    out = []
    for k in ("file", "index"):
        if not isinstance(s.get(k), str) or not s.get(k):
            out.append(f"{where}.{k} is {'missing' if k not in s else repr(s[k])}, expected a file name")
    if not _is_int(s.get("rows")) or s["rows"] < 0:
        out.append(f"{where}.rows is {'missing' if 'rows' not in s else repr(s['rows'])}, expected an integer >= 0")
    h = s.get("sha256")
    if not isinstance(h, str) or len(h) != 64 or not set(h) <= _HEX:
        out.append(f"{where}.sha256 is {'missing' if 'sha256' not in s else repr(h)[:80]}, expected 64 hex digits")
    if "index_xxh3" in s and not _is_hex16(s["index_xxh3"]):
        out.append(f"{where}.index_xxh3 is {repr(s['index_xxh3'])[:80]}, expected 16 hex digits")
    if "size" in s and (not _is_int(s["size"]) or s["size"] < 8):
        out.append(f"{where}.size is {s['size']!r}, expected a byte count")
    return out


def manifest_problems(m) -> list[str]:
    """Every schema problem of a parsed manifest (empty list: readable). Format/version are checked elsewhere."""
    if not isinstance(m, dict):
        return [f"the manifest is a JSON {type(m).__name__}, expected an object"]
    out = []
    groups = m.get("groups")
    if not isinstance(groups, dict) or not groups:
        out.append(f"'groups' is {'missing' if 'groups' not in m else repr(groups)[:80]}, expected "
                   "{name: {shape, dtype}}")
    else:
        for g, spec in groups.items():
            if not isinstance(spec, dict):
                out.append(f"groups.{g} is {spec!r}, expected {{shape, dtype}}")
                continue
            shape = spec.get("shape")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                out.append(f"groups.{g}.shape is {shape!r}, expected a list of sizes")
            if spec.get("dtype") not in MANIFEST_TO_ST:
                out.append(f"groups.{g}.dtype is {spec.get('dtype')!r}, expected one of {sorted(MANIFEST_TO_ST)}")
    for k in ("encoder", "transform", "dataset"):
        if not isinstance(m.get(k), dict):
            out.append(f"{k!r} is {'missing' if k not in m else type(m[k]).__name__}, expected an object")
    ds = m.get("dataset")
    if isinstance(ds, dict) and "classes" in ds and not (
            isinstance(ds["classes"], list) and all(isinstance(c, str) for c in ds["classes"])):
        out.append("dataset.classes is not a list of names")
    if "complete" in m and not isinstance(m["complete"], bool):
        out.append(f"'complete' is {m['complete']!r}, expected true/false")
    if "views" in m and (not _is_int(m["views"]) or m["views"] < 1):
        out.append(f"'views' is {m['views']!r}, expected an integer >= 1")
    if "failures" in m and not isinstance(m["failures"], list):
        out.append("'failures' is not a list")
    shards = m.get("shards")
    if shards is None:
        if m.get("complete"):
            out.append("'shards' is missing (a complete cache lists its shards)")
        return out
    if not isinstance(shards, list):
        return out + [f"'shards' is a {type(shards).__name__}, expected a list"]
    for i, s in enumerate(shards):
        out += _shard_problems(i, s)
        if len(out) > 20:
            return out + ["(more problems not listed)"]
    if not out and m.get("complete"):
        total = sum(s["rows"] for s in shards)
        if m.get("num_rows") != total:
            out.append(f"'num_rows' is {m.get('num_rows')!r}, the shards hold {total} rows")
        if "num_shards" in m and m["num_shards"] != len(shards):
            out.append(f"'num_shards' is {m['num_shards']!r}, the manifest lists {len(shards)} shards")
        names = [s["file"] for s in shards] + [s["index"] for s in shards]
        dup = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
        if dup:
            out.append(f"shard files listed more than once: {dup[:5]}")
    return out
