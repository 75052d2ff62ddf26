"""One writer per cache folder: an exclusive ``fcntl.flock`` on ``<cache>/.svgfeat.lock``.

The lock is tied to the open file, so the kernel releases it when the holder exits or crashes; a stale
lock file on disk means nothing. While held, the file records who holds it (pid, host, request summary)
so a refused writer can say so. The holder deletes the file before it lets go, and a writer that got the
lock checks that the file it locked is still the one at the path (else it starts over), so deleting
cannot let two writers in. A run (refused or not) therefore leaves no lock file, and a folder the lock
created is removed again when the run left it empty.
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


def _missing_dirs(root: Path) -> list[Path]:
    """The folders ``root.mkdir(parents=True)`` is about to create, deepest first."""
    out, p = [], root
    while not os.path.lexists(p) and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(root: Path, wait: float, poll: float) -> int:
    """An fd of ``root/LOCK_NAME`` holding the exclusive lock (the file still at that path)."""
    deadline = time.monotonic() + max(0.0, float(wait))
    while True:
        try:
            fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            raise CacheError(f"cannot lock cache folder {root}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            busy = e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
            holder = _holder(fd) if busy else ""
            os.close(fd)
            if not busy:
                raise CacheError(f"cannot lock cache folder {root}: {e.strerror or e}") from None
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait:g}s" if wait else ""
                raise CacheError(f"cache folder {root} is being written by {holder}{waited}; "
                                 "wait for it to finish or use another output folder") from None
            time.sleep(poll)
            continue
        if _same_file(fd, root / LOCK_NAME):
            return fd
        os.close(fd)  # the previous holder deleted the file we locked: lock the current one


@contextlib.contextmanager
def cache_lock(root, owner: dict | None = None, wait: float = 0.0, poll: float = 0.1):
    """Hold the exclusive writer lock of cache folder ``root`` (created if missing) for the ``with`` body.

    ``owner``: a small dict describing the request (shown to a refused writer). ``wait``: seconds to wait
    for the holder to finish (0: refuse at once). Raises CacheError naming the folder and the holder.
    Yields the lock file's path. On exit the lock file is deleted, and the folders this call created
    are removed when empty (a refused run leaves nothing behind).
    """
    root = Path(root)
    created = _missing_dirs(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = _acquire(root, wait, poll)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "request": _summary(owner)}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield root / LOCK_NAME
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if _same_file(fd, root / LOCK_NAME):
            with contextlib.suppress(OSError):
                os.unlink(root / LOCK_NAME)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


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
