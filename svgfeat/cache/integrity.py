"""Does a shard file match its manifest entry?  Cheap checks (containment, regular file, size, bounded
safetensors header vs the manifest's groups and rows, the header's and the index's fast hash) and, with
``deep``, the sha256.

A shard *entry* is a dict ``{"file": name, "rows": int, "sha256": hex, "size": int (optional),
"index": name (optional), "index_xxh3": hex (optional)}``: a manifest ``shards[i]`` or the same fields
from a shard index; ``"xxh3"`` (the fast hashes, see :mod:`.fasthash`) is taken from the shard index.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CacheError
from . import fasthash
from .paths import contained, open_regular, read_bytes
from .stformat import MANIFEST_TO_ST, parse_header


@dataclass
class ShardInfo:
    """A checked shard: its path, byte size, where tensor data starts and each tensor's layout."""

    path: Path
    size: int
    data_start: int
    tensors: dict = field(default_factory=dict)  # name -> {"dtype", "shape", "begin", "end"}
    fast: dict | None = None  # {"header": hex, "groups": {name: hex}} recorded at write time
    sha256: str | None = None  # whole-file sha256 (checked on first read when ``fast`` is absent)


def _header_problems(name, info, entry, groups) -> list[str]:
    rows = entry.get("rows")
    probs = []
    if groups is not None:
        missing, extra = sorted(set(groups) - set(info)), sorted(set(info) - set(groups))
        if missing:
            probs.append(f"{name}: groups {missing} listed in the manifest are not in the shard")
        if extra:
            probs.append(f"{name}: shard holds groups {extra} the manifest does not list")
    for g, t in sorted(info.items()):
        spec = (groups or {}).get(g)
        if rows == 0 and t["end"] == t["begin"]:
            continue  # empty shard (every item failed): any empty layout is fine
        if rows is not None and (not t["shape"] or t["shape"][0] != rows):
            probs.append(f"{name}: group {g!r} has {t['shape'][0] if t['shape'] else 0} rows, the manifest says {rows}")
        if spec is None:
            continue
        if list(t["shape"][1:]) != list(spec.get("shape", [])):
            probs.append(f"{name}: group {g!r} has row shape {tuple(t['shape'][1:])}, the manifest says "
                         f"{tuple(spec.get('shape', []))}")
        want = MANIFEST_TO_ST.get(spec.get("dtype"))
        if want != t["dtype"]:
            probs.append(f"{name}: group {g!r} is stored as {t['dtype']}, the manifest says {spec.get('dtype')}")
    return probs


def _fast_problems(name, fd, data_start, info, fast) -> list[str]:
    """The header's fast hash and the shape of the recorded block hashes (the data is checked on read)."""
    if fasthash.fd_header(fd, data_start) != fast.get("header"):
        return [f"{name}: header checksum mismatch (changed, corrupt or swapped with another shard)"]
    groups, block = fast.get("groups") or {}, fast["block"]
    for g, t in sorted(info.items()):
        want = -(-(t["end"] - t["begin"]) // block) * fasthash.HEX_LEN
        if not isinstance(groups.get(g), str) or len(groups[g]) != want:
            return [f"{name}: the recorded block hashes of group {g!r} do not fit its data (corrupt index)"]
    return []


def fast_problems_of(name, fast) -> list[str]:
    """Schema problems of a shard index's ``xxh3`` block (see :mod:`.fasthash`)."""
    ok = isinstance(fast, dict) and fast.get("algo") == fasthash.ALGO and type(fast.get("block")) is int \
        and fast["block"] > 0 and fasthash.is_hex(fast.get("header")) and isinstance(fast.get("groups"), dict) \
        and all(isinstance(v, str) and (v == "" or fasthash.is_hex(v, allow_many=True))
                for v in fast["groups"].values())
    return [] if ok else [f"{name}: 'xxh3' is {repr(fast)[:80]}, expected {{algo, block, header, groups}}"]


def sha256_fd(fd: int, chunk: int = 8 << 20) -> str:
    h, pos = hashlib.sha256(), 0
    while True:
        b = os.pread(fd, chunk, pos)
        if not b:
            return h.hexdigest()
        h.update(b)
        pos += len(b)


def shard_problems(root, entry: dict, groups: dict | None = None, deep: bool = False,
                   _info: list | None = None) -> list[str]:
    """Readable problems of one shard against ``entry`` and the manifest ``groups`` (empty list: fine).

    Never opens anything but a regular file inside ``root``; ``deep`` also recomputes the sha256.
    """
    name = entry.get("file") if isinstance(entry, dict) else None
    try:
        path = contained(root, name, "shard")
        fd = open_regular(path, "shard")
    except CacheError as e:
        return [str(e)]
    try:
        size = os.fstat(fd).st_size
        want = entry.get("size")
        if isinstance(want, int) and size != want:
            return [f"{name}: {size} bytes, expected {want} (truncated or replaced)"]
        try:
            start, info, _ = parse_header(fd, size, name)
        except CacheError as e:
            return [str(e)]
        probs = _header_problems(name, info, entry, groups)
        fast = entry.get("xxh3") if isinstance(entry.get("xxh3"), dict) else None
        if fast is not None:
            probs += fast_problems_of(name, fast) or _fast_problems(name, fd, start, info, fast)
        if _info is not None:
            _info.append(ShardInfo(path, size, start, info, fast, entry.get("sha256")))
        if deep and sha256_fd(fd) != entry.get("sha256"):
            probs.append(f"{name}: checksum mismatch (file changed or corrupt)")
        return probs
    except OSError as e:
        return [f"{name}: cannot read: {e.strerror or e}"]
    finally:
        os.close(fd)


def check_shard(root, entry: dict, groups: dict | None = None, deep: bool = False) -> ShardInfo:
    """The checked :class:`ShardInfo` of a shard, or CacheError listing what is wrong with it."""
    out: list[ShardInfo] = []
    probs = shard_problems(root, entry, groups, deep, _info=out)
    if probs:
        raise CacheError(f"damaged cache {root}: " + "; ".join(probs) + " (run `svgfeat cache verify`)")
    return out[0]


def read_index(root, name) -> tuple[object, str]:
    """(parsed JSON, fast hash of its bytes) of the shard index ``name`` inside ``root``."""
    import json

    raw = read_bytes(contained(root, name, "shard index"), "shard index")
    try:
        return json.loads(raw), fasthash.of_bytes(raw)
    except (ValueError, RecursionError) as e:
        raise CacheError(f"shard index {name} in {root} is not valid JSON: {str(e).splitlines()[0][:200]}") from None


def index_problems(root, entry: dict) -> tuple[list[str], dict | None]:
    """Problems of a shard's index sidecar (``entry["index"]``) against the entry; returns (problems, index)."""
    name = entry.get("index")
    try:
        idx, digest = read_index(root, name)
    except CacheError as e:
        return [str(e)], None
    want = entry.get("index_xxh3")
    edited = [f"{name}: checksum mismatch (the shard index was edited or is corrupt)"] if (
        want is not None and digest != want) else []
    if not isinstance(idx, dict):
        return [f"{name}: not a JSON object"], None
    rows, probs = entry.get("rows"), edited
    if "xxh3" in idx:
        probs += fast_problems_of(name, idx["xxh3"])
    if idx.get("rows") != rows:
        probs.append(f"{name}: says {idx.get('rows')!r} rows, the manifest says {rows}")
    for k in ("paths", "labels", "items", "views"):
        v = idx.get(k)
        if not isinstance(v, list):
            probs.append(f"{name}: {k!r} is missing or not a list")
        elif len(v) != rows:
            probs.append(f"{name}: {len(v)} {k}, expected {rows} rows")
    if isinstance(idx.get("labels"), list) and not all(type(x) is int for x in idx["labels"]):
        probs.append(f"{name}: labels must be integers")
    if isinstance(idx.get("paths"), list) and not all(isinstance(x, str) for x in idx["paths"]):
        probs.append(f"{name}: paths must be strings")
    if idx.get("sha256") is not None and entry.get("sha256") is not None and idx["sha256"] != entry["sha256"]:
        probs.append(f"{name}: checksum differs from the manifest's")
    return probs, (idx if not probs else None)
