"""The safetensors file format, read and written by hand: an 8-byte little-endian header length, a JSON
header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with
spaces to a multiple of 8, then the raw little-endian tensor bytes.

Parsing is bounded (header length, offsets within the file, byte counts matching shape x dtype,
contiguous non-overlapping data) so a damaged or hostile file gives a readable problem, never a huge
allocation. Writing streams numpy arrays to an open file and hashes the bytes as they go.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import numpy as np

from ..errors import CacheError

MAX_HEADER = 100 << 20
# safetensors dtype -> (numpy storage dtype, manifest dtype name)
ST_DTYPES = {"F16": (np.float16, "float16"), "BF16": (np.uint16, "bfloat16"), "F32": (np.float32, "float32"),
             "F64": (np.float64, "float64"), "I64": (np.int64, "int64"), "I32": (np.int32, "int32"),
             "U8": (np.uint8, "uint8")}
MANIFEST_TO_ST = {v[1]: k for k, v in ST_DTYPES.items()}
_ITEMSIZE = {k: np.dtype(v[0]).itemsize for k, v in ST_DTYPES.items()}


def parse_header(fd: int, size: int, where: str) -> tuple[int, dict, dict]:
    """(data start, {name: {"dtype", "shape", "begin", "end"}}, metadata) of a safetensors file."""
    if size < 8:
        raise CacheError(f"{where}: {size} bytes is too short for a safetensors file (truncated)")
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if n > MAX_HEADER or 8 + n > size:
        raise CacheError(f"{where}: header length {n} does not fit a {size}-byte file (truncated or not safetensors)")
    raw = os.pread(fd, n, 8)
    if len(raw) != n:
        raise CacheError(f"{where}: header truncated")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CacheError(f"{where}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CacheError(f"{where}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data = size - 8 - n
    info, spans = {}, []
    for name, t in header.items():
        try:
            dt, shape, (b, e) = t["dtype"], [int(d) for d in t["shape"]], t["data_offsets"]
            b, e = int(b), int(e)
        except (TypeError, KeyError, ValueError):
            raise CacheError(f"{where}: tensor {name!r} has a malformed header entry") from None
        if dt not in ST_DTYPES:
            raise CacheError(f"{where}: tensor {name!r} has unsupported dtype {dt!r}")
        if any(d < 0 for d in shape) or not 0 <= b <= e <= data:
            raise CacheError(f"{where}: tensor {name!r} offsets [{b}, {e}] lie outside the {data} data bytes "
                             "(truncated?)")
        need = math.prod(shape) * _ITEMSIZE[dt]
        if e - b != need:
            raise CacheError(f"{where}: tensor {name!r} holds {e - b} bytes, its shape {shape} {dt} needs {need}")
        info[name] = {"dtype": dt, "shape": shape, "begin": b, "end": e}
        spans.append((b, e))
    pos = 0
    for b, e in sorted(spans):
        if b != pos:
            raise CacheError(f"{where}: tensor data overlaps or leaves gaps (at byte {b}, expected {pos})")
        pos = e
    if pos != data:
        raise CacheError(f"{where}: file has {data} data bytes, its tensors cover {pos} (truncated or padded)")
    return 8 + n, info, meta if isinstance(meta, dict) else {}


def _as_bytes_array(a) -> tuple[str, np.ndarray]:
    """(safetensors dtype, C-contiguous numpy array to write) for a numpy array or torch tensor."""
    if not isinstance(a, np.ndarray):
        import torch

        if isinstance(a, torch.Tensor):
            t = a.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                return "BF16", t.view(torch.int16).numpy().view(np.uint16)
            a = t.numpy()
        else:
            a = np.asarray(a)
    for st, (npdt, _) in ST_DTYPES.items():
        if st != "BF16" and a.dtype == npdt:
            return st, np.ascontiguousarray(a)
    raise CacheError(f"cannot store an array of dtype {a.dtype} (expected float16/bfloat16/float32/float64/int)")


def write_safetensors(f, tensors: dict, metadata: dict | None = None, chunk_bytes: int = 64 << 20,
                      fast: dict | None = None) -> str:
    """Write ``tensors`` {name: array [..]} to the open binary file ``f``; returns the bytes' sha256.

    Arrays are written in sorted-name order, ``chunk_bytes`` at a time (a memmap input is never loaded whole).
    ``fast``: a dict filled with the fast hashes checked on read (:mod:`.fasthash`):
    ``{"algo", "block", "header": hex, "groups": {name: concatenated block hexes}}``.
    """
    from . import fasthash

    arrs = {k: _as_bytes_array(v) for k, v in sorted(tensors.items())}
    header, pos = {}, 0
    for k, (st, a) in arrs.items():
        header[k] = {"dtype": st, "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    h, fh = hashlib.sha256(), fasthash.BlockHasher(1 << 62)
    for part in (struct.pack("<Q", len(hj)), hj):
        f.write(part)
        h.update(part)
        fh.update(part)
    groups = {}
    for name, (_, a) in arrs.items():
        gh = fasthash.BlockHasher()
        flat = a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, np.uint8)
        for i in range(0, flat.size, chunk_bytes):
            mv = memoryview(flat[i:i + chunk_bytes])
            f.write(mv)
            h.update(mv)
            gh.update(mv)
        groups[name] = gh.hexdigests()
    if fast is not None:
        fast.update(algo=fasthash.ALGO, block=fasthash.BLOCK, header=fh.hexdigests(), groups=groups)
    return h.hexdigest()
