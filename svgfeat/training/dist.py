"""Small torch.distributed helpers for the AE trainer (no-ops in a single process).

Data parallelism is done by hand rather than with ``DistributedDataParallel``: one AE update and one
discriminator update per iteration, three discriminator calls, ``autograd.grad`` for the adaptive
weight and global-batch statistics make the wrapper's one-forward/one-backward bookkeeping awkward.
Instead every rank computes the gradient of its slice and :func:`average_gradients` all-reduces them
(one flat buffer per dtype), which is the DDP update rule (mean of the per-rank gradients).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str | torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on CUDA).

    Returns (DistInfo, device); on CUDA the device becomes ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)
    else:
        info = DistInfo()
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place SUM over ranks (identity in one process); returns ``t``."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(info.world)
    return t


def average_gradients(params, info: DistInfo) -> None:
    """Replace each ``p.grad`` by its mean over ranks (parameters without a gradient are skipped;
    every rank must have gradients for the same parameters)."""
    if not info.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(info.world)
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.distributed:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)
