"""The output folder: never inside the input, one writer at a time, ``--overwrite`` removes only our files.

Under torchrun rank 0 takes the cache lock for the whole run (the other ranks are the same job) and
tells the other ranks whether it got it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .. import distributed as D
from ..errors import CacheError, ConfigError


def check_not_inside_input(out, ds, allow: bool = False) -> None:
    """Refuse an output folder equal to or inside the dataset's folder (unless ``allow``)."""
    root = getattr(ds, "root", "")
    if allow or getattr(ds, "kind", "") in ("sample", "list") or not root or not Path(root).is_dir():
        return
    root, o = Path(root).resolve(), Path(out).resolve()
    if o == root or root in o.parents:
        raise ConfigError(f"output folder {out} is {'the' if o == root else 'inside the'} input folder {root}; "
                          "use a folder outside the images, or pass --allow-inside-input")


@contextlib.contextmanager
def writer_lock(out: Path, info: D.DistInfo, owner: dict):
    """Hold the exclusive cache lock of ``out`` on rank 0 for the ``with`` body; every rank raises the
    same CacheError when another writer holds it."""
    from ..cache.lock import cache_lock

    with contextlib.ExitStack() as stack:
        err = None
        if info.is_main:
            try:
                stack.enter_context(cache_lock(out, owner))
            except CacheError as e:
                err = str(e)
        err = D.broadcast_object(err, info)
        if err:
            raise CacheError(err)
        yield


def remove_previous(out: Path) -> list[Path]:
    """``--overwrite``: remove the cache files svgfeat wrote in ``out`` (manifest, shards, indexes, stats);
    anything else in the folder stays. The lock file stays too (we hold it)."""
    from ..cache.owned import remove_cache

    return remove_cache(out, include_lock=False)
