"""Shard files: safetensors written atomically, read through ``np.memmap`` (only the bytes asked for).

A shard holds every group of a contiguous run of rows: ``{group: [rows, *shape]}``. Reading parses
the safetensors header ourselves and memory-maps each tensor, so a single row of a single group
touches a few pages, never the whole shard. bf16 tensors are viewed as uint16 and widened to fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_ST_TO_NP = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16, "I64": np.int64, "F64": np.float64}


def write_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> str:
    """Write ``tensors`` atomically (temp name + fsync + rename); returns the file's sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={"svgfeat": json.dumps(meta or {})})
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return digest


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ShardReader:
    """Memory-mapped view of one shard file: ``read(group, rows)`` -> np.ndarray."""

    def __init__(self, path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.meta = header.pop("__metadata__", {}) or {}
        self._base = 8 + n
        self._info = header
        self._maps: dict[str, np.memmap] = {}

    @property
    def groups(self) -> list[str]:
        return sorted(self._info)

    def rows(self) -> int:
        first = next(iter(self._info.values()))
        return first["shape"][0]

    def _map(self, group: str) -> np.memmap:
        if group not in self._maps:
            if group not in self._info:
                raise KeyError(group)
            info = self._info[group]
            dt = _ST_TO_NP[info["dtype"]]
            start, end = info["data_offsets"]
            shape = tuple(info["shape"])
            if end == start:
                self._maps[group] = np.zeros(shape, dtype=dt)
            else:
                self._maps[group] = np.memmap(self.path, dtype=dt, mode="r", offset=self._base + start, shape=shape)
        return self._maps[group]

    def read(self, group: str, rows=None) -> np.ndarray:
        m = self._map(group)
        out = np.asarray(m if rows is None else m[rows])
        if self._info[group]["dtype"] == "BF16":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return np.array(out, copy=True)
