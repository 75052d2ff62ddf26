"""The encoder step: device batches -> requested groups in the cache dtype, on the CPU, without stalling.

``precision`` is part of the request: fp32 (default, no autocast anywhere) or bf16 autocast. On CUDA the
device->host copy goes into pinned memory with ``non_blocking=True``; the returned :class:`Encoded` carries
a CUDA event the shard writer waits on, so the GPU goes on with the next batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..cache.shards import DTYPES
from ..models.align import AlignmentStats
from ..models.svg import layers_needed


@dataclass
class Encoded:
    groups: dict  # group -> CPU tensor [rows, ...] (pinned on CUDA, maybe still being copied)
    event: object = None  # torch.cuda.Event to wait on before reading ``groups``

    def wait(self) -> dict:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.groups


def autocast_context(device, precision: str):
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Encoding:
    """Runs the encoder on device batches x [B,3,S,S] and returns the requested groups (see module doc)."""

    def __init__(self, enc, groups, dtype, device, precision: str = "fp32"):
        self.enc, self.groups, self.dtype = enc, list(groups), DTYPES[dtype]
        self.device, self.precision = torch.device(device), precision
        self.layers = layers_needed(self.groups)
        self.cuda = self.device.type == "cuda"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Encoded:
        x = x.to(self.device, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            f = self.enc.encode(x, layers=self.layers or None)
            out = {g: (self.enc.raw_residual(x) if g == "residual_raw" else f.group(g)) for g in self.groups}
        out = {g: v.float().to(self.dtype) for g, v in out.items()}
        if not self.cuda:
            return Encoded({g: v.cpu() for g, v in out.items()})
        host = {g: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for g, v in out.items()}
        for g, v in out.items():
            host[g].copy_(v, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        return Encoded(host, ev)

    def probe_groups(self, hw) -> dict:
        """{group: {"shape", "dtype"}} of one row, from a zero image of size ``hw``."""
        out = self(torch.zeros(1, 3, *hw)).wait()
        return {g: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).replace("torch.", "")} for g, v in out.items()}


@torch.no_grad()
def fixed_stats_pass(enc, batches, device, precision: str = "fp32") -> dict:
    """Fixed alignment statistics (:class:`AlignmentStats`) over normalised image batches (view 0)."""
    acc = AlignmentStats()
    dev = torch.device(device)
    for x in batches:
        x = x.to(dev, non_blocking=True)
        with autocast_context(dev, precision):
            dino, res = enc.backbone(x).patch, enc.raw_residual(x)
        acc.update(dino.float(), res.float())
    return acc.compute()
