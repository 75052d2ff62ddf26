"""SVG autoencoder losses (the official ``LPIPSWithDiscriminatorDecoder``, SVG_REFERENCE.md §1.5).

Generator (AE) step, images x, x_rec in [-1, 1], [B, 3, H, W]:
    rec   = |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)      (LPIPS [B,1,1,1] broadcast to every pixel)
    nll   = sum(rec) / B          ("sum", official)   or   mean(rec)   ("mean": the same divided by 3HW)
    g     = -mean(D(x_rec))
    d_w   = ||grad_W nll|| / (||grad_W g|| + 1e-4), clamped to [0, 1e4], detached, * disc_weight
            (W = decoder.conv_out.weight)
    loss  = nll + d_w * factor * g,   factor = disc_factor if step >= disc_start else 0
Discriminator step:
    d_loss = factor * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec.detach()))))

Differences from the official module, all without effect on the update: ``logvar`` (a parameter fixed at
0, in no optimizer) is dropped; before ``disc_start`` the discriminator is neither evaluated nor updated
(the official code runs it with factor 0, which changes only BatchNorm running statistics -- unused,
the discriminator is always in train mode -- and Adam's step counter). Because d_w scales with
||grad nll||, "sum" and "mean" reductions give the same Adam updates up to Adam's epsilon.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

REDUCTIONS = ("sum", "mean")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def adopt_weight(weight: float, step: int, threshold: int, value: float = 0.0) -> float:
    """``weight`` once ``step >= threshold``, else ``value``."""
    return value if step < threshold else weight


def adaptive_weight_from_grads(nll_grad: torch.Tensor, g_grad: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """d_w = clamp(||nll_grad|| / (||g_grad|| + 1e-4), 0, 1e4).detach() * disc_weight (fp32 scalar)."""
    w = torch.norm(nll_grad.float()) / (torch.norm(g_grad.float()) + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * disc_weight


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float,
                    grad_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    logs: dict | None = None) -> torch.Tensor:
    """Adaptive generator weight from the gradients of both losses w.r.t. ``last_layer``.

    ``grad_reduce`` (e.g. a mean over ranks) is applied to both gradients before the norms, so the
    weight is that of the global batch under data parallelism. ``logs`` receives both norms.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if grad_reduce is not None:
        nll_grad, g_grad = grad_reduce(nll_grad), grad_reduce(g_grad)
    if logs is not None:
        logs["nll_grad_norm"] = torch.norm(nll_grad.detach().float())
        logs["g_grad_norm"] = torch.norm(g_grad.detach().float())
    return adaptive_weight_from_grads(nll_grad, g_grad, disc_weight)


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, lpips: nn.Module | None, perceptual_weight: float = 1.0,
                        reduction: str = "sum") -> tuple[torch.Tensor, dict]:
    """nll of §1.5: x, x_rec [B,3,H,W] in [-1,1] -> (scalar loss, {"l1", "lpips"} detached means)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
    x, x_rec = x.float(), x_rec.float()
    rec = torch.abs(x.contiguous() - x_rec.contiguous())
    logs = {"l1": rec.detach().mean()}
    if lpips is not None and perceptual_weight > 0:
        p = lpips(x.contiguous(), x_rec.contiguous()).float()  # [B,1,1,1]
        rec = rec + perceptual_weight * p
        logs["lpips"] = p.detach().mean()
    nll = torch.sum(rec) / rec.shape[0] if reduction == "sum" else torch.mean(rec)
    return nll, logs


class AELoss(nn.Module):
    """L1 + LPIPS + PatchGAN hinge loss with the adaptive generator weight.

    ``lpips``: a frozen :class:`~svgfeat.training.lpips.LPIPS` (or None with perceptual_weight 0);
    ``discriminator``: a :class:`~svgfeat.training.discriminator.NLayerDiscriminator`.
    """

    def __init__(self, lpips: nn.Module | None, discriminator: nn.Module, disc_start: int = 2501,
                 disc_weight: float = 0.5, disc_factor: float = 1.0, perceptual_weight: float = 1.0,
                 reduction: str = "sum"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
        if perceptual_weight > 0 and lpips is None:
            raise ConfigError("perceptual_weight > 0 needs an LPIPS module")
        self.perceptual_loss = lpips
        self.discriminator = discriminator
        self.disc_start, self.disc_weight, self.disc_factor = int(disc_start), float(disc_weight), float(disc_factor)
        self.perceptual_weight, self.reduction = float(perceptual_weight), reduction

    def disc_active(self, step: int) -> bool:
        return adopt_weight(self.disc_factor, step, self.disc_start) > 0

    def generator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, last_layer: torch.Tensor, step: int,
                       grad_reduce=None) -> tuple[torch.Tensor, dict]:
        """Total AE loss for ``step`` and detached logs (nll, l1, lpips, g_loss, d_weight, disc_factor)."""
        nll, logs = reconstruction_loss(x, x_rec, self.perceptual_loss, self.perceptual_weight, self.reduction)
        logs["nll"] = nll.detach()
        factor = adopt_weight(self.disc_factor, step, self.disc_start)
        if factor <= 0:
            logs.update(d_weight=torch.zeros(()), disc_factor=torch.zeros(()))
            return nll, logs
        d = self.discriminator
        flags = [p.requires_grad for p in d.parameters()]
        d.requires_grad_(False)  # the generator step never updates D: skip its weight gradients
        try:
            logits_fake = d(x_rec.contiguous())
        finally:
            for p, f in zip(d.parameters(), flags):
                p.requires_grad_(f)
        g_loss = -torch.mean(logits_fake.float())
        d_weight = adaptive_weight(nll, g_loss, last_layer, self.disc_weight, grad_reduce, logs)
        logs.update(g_loss=g_loss.detach(), d_weight=d_weight, disc_factor=torch.tensor(factor))
        return nll + d_weight * factor * g_loss, logs

    def discriminator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, step: int) -> tuple[torch.Tensor | None, dict]:
        """Hinge loss of the discriminator (None before ``disc_start``) and logs."""
        factor = adopt_weight(self.disc_factor, step, self.disc_start)
        if factor <= 0:
            return None, {}
        logits_real = self.discriminator(x.contiguous().detach()).float()
        logits_fake = self.discriminator(x_rec.contiguous().detach()).float()
        d_loss = factor * hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean(),
                        "logits_fake": logits_fake.detach().mean()}
