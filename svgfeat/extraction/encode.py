"""The encoder step: device batches -> requested groups in the cache dtype, on the CPU, without stalling.

``precision`` is part of the request: fp32 (default, no autocast anywhere) or bf16 autocast, run through the
one :class:`~svgfeat.numerics.Numerics` object (autocast on the right device type). Every device
operation runs inside the :class:`~svgfeat.device_staging.DeviceStage` scope (explicit device AND stream):
inputs arrive through its pinned host ring, outputs leave through it with ``non_blocking=True``, and the
returned :class:`Staged` carries the event recorded on that stream, which the shard writer waits on (so the
GPU goes on with the next batch). On CPU the stage is a no-op.

Throughput knobs (recorded in the manifest, see ``request.throughput_record``): ``compile`` wraps the
forward in ``torch.compile`` (fixed shapes, ``dynamic=False``); ``channels_last`` lays the input out NHWC
for the patch-embedding convolution (default: on CUDA only); on CUDA ``cudnn.benchmark`` is switched on
around each call and restored afterwards (batches have fixed shapes), never set globally.
"""

from __future__ import annotations

import contextlib

import torch

from ..cache.shards import DTYPES
from ..device_staging import DeviceStage, Staged
from ..models.align import AlignmentStats
from ..models.svg import layers_needed
from ..numerics import Numerics

Encoded = Staged  # what the shard writer receives: ``.wait()`` -> {group: CPU tensor}


def as_numerics(device, precision) -> Numerics:
    """``precision`` may be a precision name (checked against ``device``) or a :class:`Numerics` already."""
    if isinstance(precision, Numerics):
        return precision
    return Numerics.for_device(device, precision)


def autocast_context(device, precision):
    """The autocast block of ``precision`` on ``device`` (see :meth:`Numerics.autocast`)."""
    return as_numerics(device, precision).autocast()


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """``torch.backends.cudnn.benchmark = on`` for the duration of the block, then the caller's value back."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(on)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


class Encoding:
    """Runs the encoder on batches x [B,3,S,S] (CPU or device) and returns the requested groups as
    :class:`Staged` host results (see module doc)."""

    def __init__(self, enc, groups, dtype, device, precision: str = "fp32", *, compile: bool = False,
                 channels_last: bool | None = None, stage: DeviceStage | None = None):
        self.enc, self.groups, self.dtype = enc, list(groups), DTYPES[dtype]
        self.stage = stage if stage is not None else DeviceStage(device)
        self.device = self.stage.device
        self.numerics = as_numerics(self.device, precision)
        self.precision = self.numerics.precision
        self.layers = layers_needed(self.groups)
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda if channels_last is None else bool(channels_last)
        self.cudnn_benchmark = self.cuda
        self.compiled = bool(compile)
        self._forward = torch.compile(self._eager, dynamic=False) if compile else self._eager

    def _eager(self, x: torch.Tensor) -> dict:
        with self.numerics.autocast():
            f = self.enc.encode(x, layers=self.layers or None)
            out = {g: (self.enc.raw_residual(x) if g == "residual_raw" else f.group(g)) for g in self.groups}
        return {g: v.float().to(self.dtype) for g, v in out.items()}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> Staged:
        with self.stage.scope(), cudnn_benchmark(self.cudnn_benchmark) if self.cuda else contextlib.nullcontext():
            x = self.stage.to_device(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.stage.to_host(self._forward(x))

    def probe_groups(self, hw) -> dict:
        """{group: {"shape", "dtype"}} of one row, from a zero image of size ``hw`` (eager: no compile)."""
        with torch.no_grad(), self.stage.scope():
            out = self.stage.to_host(self._eager(self.stage.to_device(torch.zeros(1, 3, *hw)))).wait()
        return {g: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).replace("torch.", "")} for g, v in out.items()}

    def close(self) -> None:
        self.stage.close()


@torch.no_grad()
def fixed_stats_pass(enc, batches, device, precision="fp32") -> dict:
    """Fixed alignment statistics (:class:`AlignmentStats`) over normalised image batches (view 0). The float64
    sums stay on the device, or go to the CPU on a device without float64 (mps)."""
    acc = AlignmentStats()
    num = as_numerics(torch.device(device), precision)
    stage = DeviceStage(device, slots=2)
    try:
        with stage.scope():
            for x in batches:
                x = stage.to_device(x)
                with num.autocast():
                    dino, res = enc.backbone(x).patch, enc.raw_residual(x)
                dino, res = dino.float(), res.float()
                if not num.has_float64:  # mps: the float64 sums stay on the CPU
                    dino, res = dino.cpu(), res.cpu()
                acc.update(dino, res)
            return acc.compute()
    finally:
        stage.close()
