"""Atomic writes of svgfeat's own files: a hidden temp name next to the target, fsync, chmod to the
user's umask, rename. Any OSError (disk full, read-only folder, permission) removes the temp file and
becomes one CacheError naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..errors import CacheError

TMP_MARK = ".tmp-"


def tmp_name(path: Path) -> Path:
    """The temp name of ``path`` for this process: ``.<name>.tmp-<pid>`` (listed by owned_files)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def file_mode() -> int:
    """0o666 masked by the process umask (what ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_file(path, durable: bool = True):
    """``with atomic_file(p) as f: f.write(...)``: ``p`` appears complete or not at all.

    ``durable``: fsync before the rename (survives a power loss); False for scratch data (much faster
    when writing thousands of small files)."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CacheError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj, durable: bool = True) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    with atomic_file(path, durable) as f:
        f.write(data)


def write_shard(path, tensors: dict, meta: dict | None = None, durable: bool = True,
                fast: dict | None = None) -> str:
    """Write ``tensors`` {group: array/tensor [rows, ...]} as one safetensors shard; returns its sha256
    (``fast``: filled with the header/group fast hashes, see :mod:`.fasthash`)."""
    from .stformat import write_safetensors

    with atomic_file(path, durable) as f:
        return write_safetensors(f, tensors, {"svgfeat": json.dumps(meta or {})}, fast=fast)
