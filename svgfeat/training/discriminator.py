"""PatchGAN discriminator (taming ``NLayerDiscriminator``) and its initialisation.

Default ``NLayerDiscriminator(3, ndf=64, n_layers=3)``: image [B, 3, H, W] in [-1, 1] -> logits
[B, 1, H/8 - 2, W/8 - 2] (30 x 30 at 256 px). Keys match the official ``loss.discriminator.main.*``:

    main.0  Conv(3 -> 64, k4 s2 p1) + bias      main.1  LeakyReLU(0.2)
    main.2  Conv(64 -> 128, k4 s2 p1, no bias)  main.3  BatchNorm   main.4  LeakyReLU
    main.5  Conv(128 -> 256, k4 s2 p1)          main.6  BatchNorm   main.7  LeakyReLU
    main.8  Conv(256 -> 512, k4 s1 p1)          main.9  BatchNorm   main.10 LeakyReLU
    main.11 Conv(512 -> 1, k4 s1 p1) + bias

Init (:func:`weights_init`): conv weights N(0, 0.02) (biases keep PyTorch's default), BatchNorm weight
N(1, 0.02), bias 0.

Batch norm under ``torch.distributed``: the official code normalises with each GPU's own batch.
:class:`GlobalBatchNorm2d` (``sync=True``) normalises with the statistics of the global batch
instead, computed with a differentiable all-reduce (works with gloo on CPU, where
``nn.SyncBatchNorm`` does not); in a single process it is exactly ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """SUM over ranks whose backward is again a SUM over ranks (the gradient w.r.t. each rank's
    contribution is the sum of every rank's upstream gradient)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch gathered over all ranks.

    Same parameters/buffers (and state-dict keys) as ``nn.BatchNorm2d``, and the same function; in
    training the statistics come from float64 per-channel sums, all-reduced when a process group with
    more than one rank is initialised (one process and W ranks then differ only in summation order).
    Outside training it is ``nn.BatchNorm2d`` (running statistics).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.track_running_stats:
            return super().forward(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        C = x.shape[1]
        xf, xd = x.float(), x.double()
        n_local = torch.tensor([x.numel() / C], dtype=torch.float64, device=x.device)
        stats = torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), n_local])
        if distributed:
            stats = _AllReduceSum.apply(stats)  # differentiable SUM over ranks
        s, ss, n = stats[:C], stats[C:2 * C], stats[2 * C]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0)  # biased, used for normalisation
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * n / (n - 1).clamp_min(1)
            self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
            self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        inv = torch.rsqrt(var + self.eps).to(xf.dtype)
        y = (xf - mean.to(xf.dtype).view(1, C, 1, 1)) * inv.view(1, C, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y.to(x.dtype)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator. ``sync_bn=True`` uses :class:`GlobalBatchNorm2d` (global-batch statistics)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, sync_bn: bool = False):
        super().__init__()
        norm = GlobalBatchNorm2d if sync_bn else nn.BatchNorm2d
        self.config = dict(input_nc=input_nc, ndf=ndf, n_layers=n_layers)
        kw, padw = 4, 1
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, kw, stride=2, padding=padw, bias=False),
                    norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, kw, stride=1, padding=padw, bias=False),
                norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, input_nc, H, W] -> patch logits [B, 1, h', w']."""
        return self.main(x)


def weights_init(m: nn.Module) -> None:
    """taming init: Conv weight N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0 (use with ``module.apply``)."""
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def build_discriminator(ndf: int = 64, n_layers: int = 3, sync_bn: bool = False, seed: int | None = None,
                        device="cpu") -> NLayerDiscriminator:
    """NLayerDiscriminator initialised with :func:`weights_init` (seeded when ``seed`` is given)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            d = NLayerDiscriminator(3, ndf, n_layers, sync_bn)
            d.apply(weights_init)
    else:
        d = NLayerDiscriminator(3, ndf, n_layers, sync_bn)
        d.apply(weights_init)
    return d.to(device)
