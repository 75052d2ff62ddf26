"""The encoder step: device batches -> requested groups in the cache dtype, on the CPU, without stalling.

``precision`` is part of the request: fp32 (default, no autocast anywhere) or bf16 autocast. Every device
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

Encoded = Staged  # what the shard writer receives: ``.wait()`` -> {group: CPU tensor}


def autocast_context(device, precision: str):
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        self.device, self.precision = self.stage.device, precision
        self.layers = layers_needed(self.groups)
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda if channels_last is None else bool(channels_last)
        self.cudnn_benchmark = self.cuda
        self.compiled = bool(compile)
        self._forward = torch.compile(self._eager, dynamic=False) if compile else self._eager

    def _eager(self, x: torch.Tensor) -> dict:
        with autocast_context(self.device, self.precision):
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
def fixed_stats_pass(enc, batches, device, precision: str = "fp32") -> dict:
    """Fixed alignment statistics (:class:`AlignmentStats`) over normalised image batches (view 0)."""
    acc = AlignmentStats()
    stage = DeviceStage(device, slots=2)
    try:
        with stage.scope():
            for x in batches:
                x = stage.to_device(x)
                with autocast_context(stage.device, precision):
                    dino, res = enc.backbone(x).patch, enc.raw_residual(x)
                acc.update(dino.float(), res.float())
            return acc.compute()
    finally:
        stage.close()
