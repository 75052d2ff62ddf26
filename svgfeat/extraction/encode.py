"""The encoder step: device batches -> requested groups in the cache dtype, on the CPU, without stalling.

``precision`` is part of the request: fp32 (default, no autocast anywhere) or bf16 autocast, run through the
one :class:`~svgfeat.numerics.Numerics` object (autocast on the right device type). On CUDA the
device->host copy goes into pinned memory with ``non_blocking=True``; the returned :class:`Encoded` carries
a CUDA event the shard writer waits on, so the GPU goes on with the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache.shards import DTYPES
from ..models.align import AlignmentStats
from ..models.svg import layers_needed
from ..numerics import Numerics


@dataclass
class Encoded:
    groups: dict  # group -> CPU tensor [rows, ...] (pinned on CUDA, maybe still being copied)
    event: object = None  # torch.cuda.Event to wait on before reading ``groups``

    def wait(self) -> dict:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.groups


def as_numerics(device, precision) -> Numerics:
    """``precision`` may be a precision name (checked against ``device``) or a :class:`Numerics` already."""
    if isinstance(precision, Numerics):
        return precision
    return Numerics.for_device(device, precision)


def autocast_context(device, precision):
    """The autocast block of ``precision`` on ``device`` (see :meth:`Numerics.autocast`)."""
    return as_numerics(device, precision).autocast()


class Encoding:
    """Runs the encoder on device batches x [B,3,S,S] and returns the requested groups (see module doc)."""

    def __init__(self, enc, groups, dtype, device, precision="fp32"):
        self.enc, self.groups, self.dtype = enc, list(groups), DTYPES[dtype]
        self.device = torch.device(device)
        self.numerics = as_numerics(self.device, precision)
        self.precision = self.numerics.precision
        self.layers = layers_needed(self.groups)
        self.cuda = self.device.type == "cuda"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Encoded:
        x = x.to(self.device, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.numerics.autocast():
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
def fixed_stats_pass(enc, batches, device, precision="fp32") -> dict:
    """Fixed alignment statistics (:class:`AlignmentStats`) over normalised image batches (view 0). The float64
    sums stay on the device, or go to the CPU on a device without float64 (mps)."""
    acc = AlignmentStats()
    dev = torch.device(device)
    num = as_numerics(dev, precision)
    for x in batches:
        x = x.to(dev, non_blocking=True)
        with num.autocast():
            dino, res = enc.backbone(x).patch, enc.raw_residual(x)
        dino, res = dino.float(), res.float()
        if not num.has_float64:
            dino, res = dino.cpu(), res.cpu()
        acc.update(dino, res)
    return acc.compute()
