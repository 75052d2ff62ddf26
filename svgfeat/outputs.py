"""The files a command writes: checked before any work, written whole, marked as svgfeat's.

A command lists every file it will write and calls :func:`check_outputs` before it starts: an existing file svgfeat
did not write is refused (one line naming how many and the first few) unless ``overwrite``. It then writes each
with :func:`write_output` (:mod:`svgfeat.atomic`: a temp file, fsync, rename, the ``user.svgfeat`` mark).

``/dev/stdout``, ``/dev/stderr`` and character devices (``/dev/null``, a terminal) are written in place, never
renamed over; a FIFO is refused (it could block), as are folders and other special files.
"""

from __future__ import annotations

import os
import stat
import sys

from .atomic import check_outputs as _check
from .atomic import write_bytes_atomic

STREAMS = ("/dev/stdout", "/dev/stderr")


def in_place(path) -> bool:
    """``path`` is a standard stream or a character device: written in place."""
    if str(path) in STREAMS:
        return True
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_outputs(paths, overwrite: bool = False, what: str = "output file") -> None:
    """Refuse, before any work, an output svgfeat did not write (see :func:`svgfeat.atomic.check_output`); None
    entries (an output not asked for) and streams/devices are skipped."""
    _check([p for p in paths if p is not None and str(p) != "" and not in_place(p)], overwrite, what)


def write_output(path, data: str | bytes) -> None:
    """``data`` to ``path``: whole or not at all and marked as ours, or in place for a stream or a device.
    Raises OSError (a device) or CacheError (a file) when the write fails."""
    raw = data.encode() if isinstance(data, str) else data
    if str(path) in STREAMS:
        stream = sys.stdout if str(path) == STREAMS[0] else sys.stderr
        stream.flush()
        stream.buffer.write(raw) if hasattr(stream, "buffer") else stream.write(raw.decode())
        stream.flush()
    elif in_place(path):
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    else:
        write_bytes_atomic(path, raw, durable=False)
