"""Exactly the files svgfeat wrote in a cache folder, so ``--overwrite`` removes those and nothing else.

Owned: ``manifest.json`` (only when it is an svgfeat cache manifest), the shard files and shard indexes
the manifest names (or, for an interrupted extraction, ``shard-NNNNN.*`` below its ``num_shards``),
``stats.json``, the writer lock and svgfeat temp files (``.<owned name>.tmp-<pid>``). Never a directory,
never a name outside the folder, never anything else.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..atomic import TMP_MARK
from ..errors import CacheError
from .lock import LOCK_NAME
from .paths import read_json

MANIFEST = "manifest.json"
STATS = "stats.json"
_SHARD_RE = re.compile(r"shard-\d{5,}\.(safetensors|json)")
_TMP_RE = re.compile(r"\.(manifest\.json|stats\.json|shard-\d{5,}\.(?:safetensors|json))" + re.escape(TMP_MARK)
                     + r"\d+")


def _svgfeat_manifest(root: Path) -> dict | None:
    p = root / MANIFEST
    if not os.path.lexists(p):
        return None
    try:
        m = read_json(p, "manifest")
    except CacheError:
        return None
    return m if isinstance(m, dict) and m.get("format") == "svgfeat-cache" else None


def _plain(root: Path, name) -> bool:
    """True for a plain file name of ours that exists in root as a file or symlink (never a directory)."""
    if not isinstance(name, str) or not _SHARD_RE.fullmatch(name):
        return False
    try:
        return not stat.S_ISDIR(os.lstat(root / name).st_mode)
    except OSError:
        return False


def owned_files(root) -> list[Path]:
    """Sorted paths of the files svgfeat wrote in cache folder ``root`` (see module doc)."""
    root = Path(root)
    if not root.is_dir():
        return []
    names: set[str] = set()
    m = _svgfeat_manifest(root)
    if m is not None:
        names.add(MANIFEST)
        shards = m.get("shards")
        if isinstance(shards, list):
            for s in shards:
                if isinstance(s, dict):
                    names.update(n for n in (s.get("file"), s.get("index")) if _plain(root, n))
        n = m.get("num_shards")
        if isinstance(n, int) and 0 <= n < 10_000_000:
            for i in range(n):
                names.update(x for x in (f"shard-{i:05d}.safetensors", f"shard-{i:05d}.json") if _plain(root, x))
        if (root / STATS).is_file() and not (root / STATS).is_symlink():
            names.add(STATS)
    for e in os.scandir(root):
        if e.is_file(follow_symlinks=False) and (e.name == LOCK_NAME or _TMP_RE.fullmatch(e.name)):
            names.add(e.name)
    return sorted(root / n for n in names)


def remove_cache(root, include_lock: bool = False) -> list[Path]:
    """Unlink the files svgfeat wrote in ``root`` (never a directory, never anything else); returns them.

    The lock file is kept unless ``include_lock`` (remove it only when nobody can be holding it: a writer
    that holds the lock keeps it, so a second writer cannot start a parallel lock file).
    """
    removed = []
    for p in owned_files(root):
        if p.name == LOCK_NAME and not include_lock:
            continue
        try:
            os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CacheError(f"cannot remove {p}: {e.strerror or e}") from None
    return removed


def refuse_foreign_cache_names(root) -> None:
    """CacheError when folder ``root`` has no svgfeat manifest but holds files named like ours
    (``shard-NNNNN.*``, ``stats.json``): they are the user's, and writing the cache would replace them."""
    root = Path(root)
    if not root.is_dir() or _svgfeat_manifest(root) is not None:
        return
    strays = sorted(e.name for e in os.scandir(root) if _SHARD_RE.fullmatch(e.name) or e.name == STATS)
    if strays:
        raise CacheError(f"{root} holds files named like a cache ({', '.join(strays[:3])}) but no svgfeat manifest; "
                         "refusing to overwrite them (use an empty folder)")


def looks_like_cache(root) -> bool:
    """True when ``root`` holds an svgfeat manifest (the folder was written by svgfeat)."""
    return _svgfeat_manifest(Path(root)) is not None


__all__ = ["owned_files", "remove_cache", "looks_like_cache", "refuse_foreign_cache_names"]
