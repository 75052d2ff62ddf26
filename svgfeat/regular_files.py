"""Opening a path svgfeat was given (configs, checkpoints, environment overrides, sidecars, label files):
regular files only, and never blocking.

Every such path is opened with ``O_NONBLOCK`` (so a FIFO or a device cannot stall the ``open``), checked
with ``fstat`` (a FIFO, a device or a folder is refused at once with one line), then switched back to
blocking reads. Metadata (JSON/YAML/text lists) is read with a size bound. Libraries that insist on a
path (safetensors, faiss) get ``/proc/self/fd/N`` of the checked descriptor, so the file they read is
the one that was checked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from .errors import ConfigError

MAX_META_BYTES = 64 << 20  # a JSON/YAML config or sidecar larger than this is refused
LIST_BYTES = 1 << 30  # a file list, label file or split list (1.28M lines are ~80 MB)
_PROC_FD = "/proc/self/fd"


def open_regular(path, what: str = "file", *, error=ConfigError, nofollow: bool = False) -> int:
    """A blocking read-only descriptor of regular file ``path``; ``error`` (one line) for anything else.

    ``nofollow``: refuse a symlink as the last path component (for files that must be ours)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    if str(path) == "":
        raise error(f"{what}: empty path")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {Path(path).name} is missing from {Path(path).parent}") from None
    except OSError as e:
        raise error(f"cannot open {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
                "a device or socket"
            raise error(f"{what} {path} is {kind}, not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except OSError as e:
        os.close(fd)
        raise error(f"cannot open {what} {path}: {e.strerror or e}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path, what: str = "file", *, error=ConfigError) -> Path:
    """``path`` after checking that it is a regular file (opened and closed without blocking)."""
    os.close(open_regular(path, what, error=error))
    return Path(path)


def read_bytes(path, what: str = "file", max_bytes: int | None = MAX_META_BYTES, *, error=ConfigError,
               nofollow: bool = False) -> bytes:
    """The bytes of regular file ``path``; refused when larger than ``max_bytes`` (None: no bound)."""
    fd = open_regular(path, what, error=error, nofollow=nofollow)
    try:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise error(f"{what} {path} is {size} bytes, more than the {max_bytes} expected of it")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise error(f"{what} {path} grew beyond {max_bytes} bytes while being read")
        return data
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def read_text(path, what: str = "file", max_bytes: int | None = MAX_META_BYTES, *, error=ConfigError) -> str:
    # the one reader of users' small text files (YAML, JSON metadata, file lists, label files, classes.txt)
    """UTF-8 text of regular file ``path`` (a BOM is dropped); one line naming the byte offset if not UTF-8."""
    raw = read_bytes(path, what, max_bytes, error=error)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); "
                    "save it as UTF-8") from None


@contextlib.contextmanager
def opened(path, what: str = "file", *, error=ConfigError):
    """``with opened(p) as f``: a binary file object of regular file ``p`` (for torch.load, PIL, hashes)."""
    fd = open_regular(path, what, error=error)
    with os.fdopen(fd, "rb") as f:
        yield f


@contextlib.contextmanager
def checked_path(path, what: str = "file", *, error=ConfigError):
    """``with checked_path(p) as q``: a path naming exactly the checked regular file (``/proc/self/fd/N``
    while the ``with`` lasts), for libraries that only take paths."""
    fd = open_regular(path, what, error=error)
    try:
        proxy = f"{_PROC_FD}/{fd}"
        yield proxy if os.path.isdir(_PROC_FD) else str(path)
    finally:
        os.close(fd)


__all__ = ["MAX_META_BYTES", "open_regular", "check_regular", "read_bytes", "read_text", "opened",
           "checked_path"]
