"""Containment: every file name read from a manifest or shard index must stay inside its cache folder.

A name is one plain path component (no ``/``, no ``..``, not absolute); after resolving symlinks it
must still lie inside the folder, and it is only ever opened as a regular file (``O_NONBLOCK`` +
``fstat``), so a FIFO, a device such as ``/dev/zero`` or a directory is refused without blocking.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .. import regular_files
from ..errors import CacheError

MAX_JSON_BYTES = 1 << 30  # a manifest or shard index larger than this is not one of ours


def contained(root, name, what: str = "file") -> Path:
    """The path of ``name`` inside ``root``; CacheError when it is not a plain name resolving inside root."""
    root = Path(root)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CacheError(f"{what} name {name!r} in {root} is not a file name")
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        raise CacheError(f"{what} {name!r} in {root} leaves the cache folder (expected a plain file name)")
    path = root / name
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return path  # one plain component that is not a symlink: inside root by construction
    except OSError:
        return path  # missing: opening it reports that
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, name))
    if os.path.dirname(real) != real_root and not real.startswith(real_root + os.sep):
        raise CacheError(f"{what} {name!r} in {root} resolves outside the cache folder ({real})")
    return path


def open_regular(path, what: str = "file") -> int:
    """``os.open`` a regular file for reading without ever blocking (FIFOs, devices and dirs are refused)."""
    return regular_files.open_regular(path, what, error=CacheError)


def read_bytes(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    return regular_files.read_bytes(path, what, max_bytes, error=CacheError)


def read_json(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES):
    """Parse a JSON file opened as a regular file with a size bound; CacheError on any failure."""
    raw = read_bytes(path, what, max_bytes)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CacheError(f"{what} {path} is not valid JSON: {str(e).splitlines()[0][:200]}") from None


def read_json_in(root, name, what: str = "file", max_bytes: int = MAX_JSON_BYTES):
    """``read_json`` of ``name`` after checking that it stays inside ``root``."""
    return read_json(contained(root, name, what), what, max_bytes)
