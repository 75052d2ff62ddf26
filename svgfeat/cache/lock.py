"""One writer per cache folder: an exclusive ``fcntl.flock`` on ``<cache>/.svgfeat.lock``.

The lock is tied to the open file, so the kernel releases it when the holder exits or crashes; a stale
lock file on disk means nothing. While held, the file records who holds it (pid, host, request summary)
so a refused writer can say so. The file is never deleted on release (deleting a lock file races with
a writer that has just opened it); ``remove_cache(..., include_lock=True)`` removes it when nobody holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import CacheError

LOCK_NAME = ".svgfeat.lock"


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return "another process"
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    req = info.get("request")
    return who + (f" ({req})" if req else "")


def _summary(owner: dict | None) -> str:
    if not owner:
        return ""
    text = ", ".join(f"{k}={v}" for k, v in owner.items() if k not in ("pid", "host"))
    return text[:300]


@contextlib.contextmanager
def cache_lock(root, owner: dict | None = None, wait: float = 0.0, poll: float = 0.1):
    """Hold the exclusive writer lock of cache folder ``root`` (created if missing) for the ``with`` body.

    ``owner``: a small dict describing the request (shown to a refused writer). ``wait``: seconds to wait
    for the holder to finish (0: refuse at once). Raises CacheError naming the folder and the holder.
    Yields the lock file's path.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        raise CacheError(f"cannot lock cache folder {root}: {e.strerror or e}") from None
    try:
        deadline = time.monotonic() + max(0.0, float(wait))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise CacheError(f"cannot lock cache folder {root}: {e.strerror or e}") from None
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait:g}s" if wait else ""
                    raise CacheError(f"cache folder {root} is being written by {_holder(fd)}{waited}; "
                                     "wait for it to finish or use another output folder") from None
                time.sleep(poll)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "request": _summary(owner)}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield root / LOCK_NAME
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(root) -> bool:
    """True when some process holds the writer lock of ``root`` (a probe; does not keep the lock)."""
    p = Path(root) / LOCK_NAME
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
