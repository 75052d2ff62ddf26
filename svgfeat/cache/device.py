"""A whole cache group as ONE device tensor, built by streaming shard blocks into a preallocated tensor.

On CUDA the blocks go through two pinned staging buffers with non-blocking copies (no whole-group CPU
copy ever exists); on CPU they are read straight into the result's memory.
"""

from __future__ import annotations

import numpy as np
import torch

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
    device = torch.device(device)
    tdt = _torch_dtype(cache, group, dtype)
    shape = tuple(cache.groups[group]["shape"])
    n = len(cache)
    row = int(np.prod(shape, dtype=np.int64))
    nbytes = n * row * torch.empty(0, dtype=tdt).element_size()
    # read as stored width (fp16 stays fp16), convert on the device
    read_np = np.float16 if cache.groups[group]["dtype"] == "float16" and tdt != torch.float32 else np.float32
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
    step = max(1, STAGE_BYTES // max(1, row * np.dtype(read_np).itemsize))
    pin = device.type == "cuda"
    stages = [torch.empty((min(step, max(n, 1)), *shape), dtype=torch.from_numpy(np.empty(0, read_np)).dtype,
                          pin_memory=pin) for _ in range(2 if pin else 1)]
    events = [None] * len(stages)
    for k, a in enumerate(range(0, n, step)):
        b = min(n, a + step)
        i = k % len(stages)
        if events[i] is not None:
            events[i].synchronize()
        buf = stages[i][: b - a]
        cache.read(group, slice(a, b), out=buf.numpy())
        out[a:b].copy_(buf, non_blocking=pin)
        if pin:
            events[i] = torch.cuda.Event()
            events[i].record()
    if pin:
        torch.cuda.current_stream(device).synchronize()
    return out
