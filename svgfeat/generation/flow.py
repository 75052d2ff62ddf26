"""Rectified-flow / flow-matching objective of SVG (t=0 noise, t=1 data).

x_t = (1-t) x0 + t x1 with x0 ~ N(0, I); the target velocity is x1 - x0; t = shift(U(0,1), s).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def shift_t(t, s: float):
    """Time shift t' = s*t / (1 + (s-1)*t) (works on floats and tensors). s<1 biases t toward noise (t=0).

    s <= 0 returns t unchanged (as the official code does).
    """
    if s <= 0:
        return t
    return s * t / (1 + (s - 1) * t)


def _unwrap(model):
    return getattr(model, "module", model)


def flow_matching_loss(model, x1: torch.Tensor, y: torch.Tensor, shift: float = 0.4, generator=None,
                       grid=None, reduction: str = "mean"):
    """Flow-matching MSE on the first C output channels.

    model: SVGDiT (or DDP around one); x1: normalised data tokens [B,N,C] float; y: labels long [B].
    generator: torch.Generator on x1's device for t, x0 and label dropout (None: global RNG).
    Label dropout (p = class_dropout_prob) is drawn here with ``generator`` when the model is training.
    Returns the scalar loss (``reduction="mean"``) or the per-sample MSE [B] (``"none"``).
    """
    if x1.dim() != 3:
        raise ConfigError(f"flow_matching_loss: expected tokens [B,N,C], got {tuple(x1.shape)}")
    B = x1.shape[0]
    if y.shape != (B,):
        raise ConfigError(f"flow_matching_loss: labels must have shape [{B}], got {tuple(y.shape)}")
    dev = x1.device
    t = shift_t(torch.rand(B, device=dev, generator=generator), shift)
    x0 = torch.randn(x1.shape, device=dev, generator=generator, dtype=x1.dtype)
    drop = None
    m = _unwrap(model)
    p = getattr(getattr(m, "y_embedder", None), "dropout_prob", 0.0)
    if m.training and p > 0:
        drop = torch.rand(B, device=dev, generator=generator) < p
    return flow_loss_from_noise(model, x1, y, t, x0, drop, grid=grid, reduction=reduction)


def flow_loss_from_noise(model, x1, y, t, x0, drop_mask=None, grid=None, reduction: str = "mean"):
    """The same loss with the randomness given: t [B] (already shifted), x0 like x1, drop_mask bool [B]|None."""
    B = x1.shape[0]
    te = t.view(B, 1, 1).to(x1.dtype)
    xt = (1 - te) * x0 + te * x1
    kw = {} if drop_mask is None else {"drop_mask": drop_mask}
    v = model(xt, t.to(x1.dtype), y, grid=grid, **kw)
    C = x1.shape[-1]
    mse = ((v[..., :C].float() - (x1 - x0).float()) ** 2).mean(dim=(1, 2))
    return mse.mean() if reduction == "mean" else mse
