"""Shard files: one safetensors file per run of rows, ``{group: [rows, *shape]}``.

Writing (:func:`write_shard`, atomic via :mod:`svgfeat.atomic`, umask-respecting) lives here; this module keeps the
historical names and :class:`ShardReader`, a single-file reader used by tools and tests. The cache reader
itself goes through :mod:`.pool` (bounded open handles).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file
from .integrity import ShardInfo, sha256_fd
from .paths import open_regular
from .pool import ShardHandle
from .stformat import ST_DTYPES, parse_header

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def file_sha256(path) -> str:
    """sha256 of a regular file (FIFOs and devices are refused, never read)."""
    fd = open_regular(path, "shard")
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def widen_bf16(a: np.ndarray) -> np.ndarray:
    """bf16 bits stored as uint16 -> float32 values."""
    return (a.astype(np.uint32) << 16).view(np.float32)


class ShardReader:
    """One shard file read with ``pread`` (only the rows asked for): ``read(group, rows)`` -> np.ndarray."""

    def __init__(self, path):
        self.path = str(path)
        fd = open_regular(self.path, "shard")
        try:
            size = os.fstat(fd).st_size
            base, info, meta = parse_header(fd, size, Path(self.path).name)
        finally:
            os.close(fd)
        self._info, self.meta = info, meta
        self._shard = ShardInfo(Path(self.path), size, base, info)

    @property
    def groups(self) -> list[str]:
        return sorted(self._info)

    def rows(self) -> int:
        first = next(iter(self._info.values()))
        return first["shape"][0]

    def read(self, group: str, rows=None) -> np.ndarray:
        t = self._info[group]
        n = t["shape"][0] if t["shape"] else 0
        scalar = rows is not None and np.isscalar(rows)
        r = np.arange(n)[rows] if rows is None or isinstance(rows, slice) else np.atleast_1d(np.asarray(rows))
        r = np.where(r < 0, r + n, r).astype(np.int64)
        if r.size and (r.min() < 0 or r.max() >= n):
            raise IndexError(f"row index out of range for a shard of {n} rows")
        uniq, inv = np.unique(r, return_inverse=True)
        dt = np.float32 if t["dtype"] == "BF16" else ST_DTYPES[t["dtype"]][0]
        out = np.empty((len(uniq), *t["shape"][1:]), dtype=dt)
        h = ShardHandle(self._shard)
        try:
            h.take(group, uniq, out)
        finally:
            h.close()
        out = out[inv.reshape(-1)]
        return out[0] if scalar else out


def write_shard(path, tensors: dict, meta: dict | None = None, durable: bool = True,
                fast: dict | None = None) -> str:
    """Write ``tensors`` {group: array/tensor [rows, ...]} as one safetensors shard; returns its sha256
    (``fast``: filled with the header/group fast hashes, see :mod:`.fasthash`)."""
    from .stformat import write_safetensors

    with atomic_file(path, durable) as f:
        return write_safetensors(f, tensors, {"svgfeat": json.dumps(meta or {})}, fast=fast)
