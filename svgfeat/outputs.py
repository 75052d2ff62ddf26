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
from pathlib import Path

from .atomic import check_output, write_bytes_atomic
from .errors import ConfigError

STREAMS = ("/dev/stdout", "/dev/stderr")


def in_place(path) -> bool:
    """``path`` is a standard stream or a character device (itself, not a link to one: the write opens it with
    O_NOFOLLOW, and a link goes through :func:`svgfeat.atomic.check_output` like any other): written in place."""
    if str(path) in STREAMS:
        return True
    try:
        return stat.S_ISCHR(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_outputs(paths, overwrite: bool = False, what: str = "output file") -> list[Path]:
    """:func:`svgfeat.atomic.check_output` for every file a run will write, before it starts; None entries (an
    output not asked for) and streams/devices are skipped. One ConfigError names how many are refused and the
    first few (a folder of 10,000 PNGs is one line, not 10,000 runs)."""
    paths = [Path(p) for p in paths if p is not None and str(p) != "" and not in_place(p)]
    refused = []
    for p in paths:
        try:
            check_output(p, overwrite, what)
        except ConfigError as e:
            refused.append((p, e))
    if len(refused) == 1:
        raise refused[0][1]
    if refused:
        names = ", ".join(p.name for p, _ in refused[:3]) + (", ..." if len(refused) > 3 else "")
        raise ConfigError(f"{len(refused)} {what}s in {refused[0][0].parent} ({names}) exist and were not written "
                          "by svgfeat; refusing to replace them (pass --overwrite, or choose another path)")
    return paths


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
