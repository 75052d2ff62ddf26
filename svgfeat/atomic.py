"""Atomic writes of svgfeat's files: a hidden temp name next to the target, fsync, chmod to the user's
umask, rename. Any OSError (disk full, read-only folder, permission) removes the temp file and becomes
one CacheError naming the path.

Outputs a user names (``-o``, ``--write-official``...) are never replaced unless svgfeat wrote them:
every file written here is marked with the extended attribute ``user.svgfeat`` (it travels with the
rename), and :func:`check_output` refuses an existing file without that mark unless ``overwrite``. On
a file system without user extended attributes nothing is marked, so a rerun needs ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path

from .errors import CacheError, ConfigError

TMP_MARK = ".tmp-"
OWNER_XATTR = "user.svgfeat"


def tmp_name(path: Path) -> Path:
    """The temp name of ``path`` for this process: ``.<name>.tmp-<pid>`` (listed by owned_files)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def file_mode() -> int:
    """0o666 masked by the process umask (what ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def mark_written(path) -> None:
    """Record that svgfeat wrote ``path`` (an extended attribute; silently nothing where unsupported)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(path, OWNER_XATTR, b"written", follow_symlinks=False)


def written_by_svgfeat(path) -> bool:
    """True when ``path`` is a regular file that svgfeat wrote (see :func:`mark_written`)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode) and \
            os.getxattr(path, OWNER_XATTR, follow_symlinks=False) == b"written"
    except (OSError, AttributeError):
        return False


def check_output(path, overwrite: bool = False, what: str = "output file") -> Path:
    """``path`` when svgfeat may write it: missing, or a file svgfeat wrote, or any regular file or link
    with ``overwrite``. A folder, FIFO or device is always refused (never renamed over); so is a file we
    did not write without ``overwrite``. Call it for every output before the work starts."""
    if path is None or str(path) == "":
        raise ConfigError(f"{what}: empty path")
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    except OSError as e:
        raise ConfigError(f"cannot use {what} {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise ConfigError(f"{what} {p} exists and is not a regular file; refusing to replace it")
    if not overwrite and not written_by_svgfeat(p):
        raise ConfigError(f"{what} {p} exists and was not written by svgfeat; refusing to replace it "
                          "(pass --overwrite, or choose another path)")
    return p


def _as_oserror(e: BaseException) -> OSError | None:
    """The OSError behind a failed write: itself, the one a library (torch.save into a file object)
    wrapped in its own error, or the 'os error N' text of safetensors."""
    seen, c = 0, e
    while c is not None and seen < 8:
        if isinstance(c, OSError):
            return c
        c, seen = c.__context__, seen + 1
    code = re.search(r"os error (\d+)", str(e))
    return OSError(int(code.group(1)), os.strerror(int(code.group(1)))) if code else None


@contextlib.contextmanager
def atomic_path(path, durable: bool = True):
    """``with atomic_path(p) as tmp: <write the file tmp by any means>``: then ``p`` appears complete
    (fsync'd, umask mode, marked as ours) or not at all; the temp file never survives an error."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file (or a link to one) where the parent folder should be
            raise NotADirectoryError(20, os.strerror(20), str(path.parent)) from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover of a dead process with our pid (never written through)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if durable:
                os.fsync(fd)
            os.fchmod(fd, file_mode())
        finally:
            os.close(fd)
        mark_written(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = _as_oserror(e)
        if err is not None and not isinstance(e, CacheError):
            raise CacheError(f"cannot write {path}: {err.strerror or err}") from None
        raise


@contextlib.contextmanager
def atomic_file(path, durable: bool = True):
    """``with atomic_file(p) as f: f.write(...)``: ``p`` appears complete or not at all.

    ``durable``: fsync before the rename (survives a power loss); False for scratch data (much faster
    when writing thousands of small files)."""
    with atomic_path(path, durable) as tmp, open(tmp, "xb") as f:
        yield f


def write_bytes_atomic(path, data: bytes, durable: bool = True) -> Path:
    with atomic_file(path, durable) as f:
        f.write(data)
    return Path(path)


def write_json_atomic(path, obj, durable: bool = True) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    with atomic_file(path, durable) as f:
        f.write(data)
