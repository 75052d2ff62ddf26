"""The one torch.distributed helper: rank/device binding under ``torchrun`` and small collectives.

Used by ``extract``, ``train-dit``, ``train-ae``, ``seg train`` and ``depth train``. In a single process every helper is a
no-op. Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup` joins the process group (nccl on CUDA, gloo on
CPU; ``SVGFEAT_BACKEND`` overrides) and binds a CUDA request to ``cuda:LOCAL_RANK``, so 8 ranks on one
node use 8 GPUs. :func:`teardown` destroys the group only if :func:`setup` created it.

Data parallelism in the AE trainer is done by hand rather than with ``DistributedDataParallel`` (one AE and
one discriminator update per iteration, ``autograd.grad`` for the adaptive weight): every rank computes the
gradient of its slice and :func:`average_gradients` all-reduces them (one flat buffer per dtype), which is
the DDP update rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError

BACKEND_ENV = "SVGFEAT_BACKEND"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _int_env(env, key: str, default: int) -> int:
    v = env.get(key)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {key}={v!r}: expected an integer (set by torchrun)") from None


def env_ranks(env=None) -> tuple[int, int, int]:
    """(rank, world, local_rank) from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun); (0, 1, 0) without them."""
    env = os.environ if env is None else env
    world = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    local = _int_env(env, "LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def device_for(device, local_rank: int, world: int, visible: int | None = None) -> torch.device:
    """The device this rank uses for a requested ``device`` (pure; no CUDA needed).

    CPU stays CPU. In one process the request is kept as given. Under torchrun a CUDA request without an
    index becomes ``cuda:local_rank``; when each rank sees a single GPU (``visible`` == 1, e.g. per-rank
    ``CUDA_VISIBLE_DEVICES``) it is ``cuda:0``. An explicit index that is not the rank's own GPU is refused:
    every rank would share it.
    """
    device = torch.device(device)
    if device.type != "cuda" or world <= 1:
        return device
    want = 0 if visible == 1 else local_rank
    if visible is not None and want >= visible:
        raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: this process sees {visible} CUDA device(s)")
    if device.index is not None and device.index != want:
        raise ConfigError(f"--device {device} under torchrun: rank with LOCAL_RANK {local_rank} must use cuda:{want}; "
                          "pass --device cuda and each rank binds its own GPU")
    return torch.device("cuda", want)


def backend_for(device) -> str:
    """nccl for CUDA devices, gloo otherwise (``SVGFEAT_BACKEND`` overrides)."""
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        return forced
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def setup(device="cpu") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun``; returns (DistInfo, this rank's device)."""
    rank, world, local = env_ranks()
    device = torch.device(device)
    visible = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else None
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        dev = device_for(device, local, world, visible)
        info = DistInfo(dist.get_rank(), world, local, False, dist.get_backend())
    elif world > 1:
        dev = device_for(device, local, world, visible)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # before init: nccl binds the current device
        backend = backend_for(dev)
        dist.init_process_group(backend)
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local, True, backend)
    else:
        return DistInfo(), device
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return info, dev


def current() -> DistInfo:
    """This process's place in the process group that is already initialised (``DistInfo()`` when none is):
    what a library function uses to run data parallel under ``torchrun`` without being handed the info."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_ranks()[2], False, dist.get_backend())
    return DistInfo()


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_available() and dist.is_initialized():
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


def broadcast(t: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    """In-place copy of rank ``src``'s tensor to every rank; returns ``t``."""
    if info.distributed:
        dist.broadcast(t, src=src)
    return t


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s picklable object on every rank (``obj`` itself in one process)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


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
