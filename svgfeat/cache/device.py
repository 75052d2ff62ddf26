"""A whole cache group as ONE device tensor, built by streaming shard blocks into a preallocated tensor.

On CUDA the blocks go through the pinned host ring of a :class:`~svgfeat.device_staging.DeviceStage`
(explicit device and stream, events on that stream, buffers reused: no whole-group CPU copy ever exists);
on CPU they are read straight into the result's memory.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device_staging import DeviceStage, resolve_device
from ..errors import CacheError
from .memory import check_budget, gb

STAGE_BYTES = 64 << 20
_TORCH = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _torch_dtype(cache, group, dtype) -> torch.dtype:
    if dtype is None:
        return torch.float16 if cache.groups[group]["dtype"] == "float16" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) in _TORCH:
        return _TORCH[str(dtype)]
    raise CacheError(f"dtype {dtype!r}: expected one of {sorted(_TORCH)}")


def stream_to_device(cache, group: str, device, dtype=None) -> torch.Tensor:
    """``[len(cache), *shape]`` tensor of ``group`` on ``device`` (see module doc)."""
    device = resolve_device(device)
    tdt = _torch_dtype(cache, group, dtype)
    shape = tuple(cache.groups[group]["shape"])
    n = len(cache)
    row = int(np.prod(shape, dtype=np.int64))
    nbytes = n * row * torch.empty(0, dtype=tdt).element_size()
    # read as stored width (fp16 stays fp16), convert on the device
    read_dt = torch.float16 if cache.groups[group]["dtype"] == "float16" and tdt != torch.float32 else torch.float32
    if device.type == "cpu":
        check_budget(nbytes, f"group {group!r} on cpu", cache.memory_budget, "use dtype=torch.float16 or a subset")
        out = torch.empty((n, *shape), dtype=tdt)
        if tdt in (torch.float16, torch.float32, torch.float64):
            cache.read(group, out=out.numpy())
            return out
    else:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > free:
                raise CacheError(f"group {group!r} needs {gb(nbytes)} on {device}, {gb(free)} is free; "
                                 "use dtype=torch.float16 or a subset")
        out = torch.empty((n, *shape), dtype=tdt, device=device)
    step = max(1, STAGE_BYTES // max(1, row * torch.empty(0, dtype=read_dt).element_size()))

    def blocks():
        for a in range(0, n, step):
            b = min(n, a + step)
            yield a, b, read_dt, (lambda host, a=a, b=b: cache.read(group, slice(a, b), out=host.numpy()))

    stage = DeviceStage(device, slots=2)
    try:
        stage.upload_into(out, blocks())
    finally:
        stage.close()
    return out
