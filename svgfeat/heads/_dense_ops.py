"""The numeric pieces of dense-head training and inference, used by :mod:`svgfeat.heads._dense` and the metrics:
the learning-rate schedule, mmseg's sliding-window inference, the BatchNorm with global-batch statistics under
torchrun, and array checks. Small and free of the estimator; shape comments on each."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from ..errors import DataError


def lr_factor(it: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warm-up, then cosine (to 0) or poly(0.9)."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    t = (it - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return (1 - min(t, 1.0)) ** 0.9


def _is_feature_array(x) -> bool:
    """A float tensor / array [N, C, h, w] (dense features), as opposed to images."""
    if torch.is_tensor(x):
        return x.ndim == 4 and x.is_floating_point()
    return isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype.kind == "f"


def _upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return logits if tuple(logits.shape[-2:]) == tuple(size) else F.interpolate(
        logits, size=tuple(size), mode="bilinear", align_corners=False)


def hw(v) -> tuple[int, int]:
    """An int or (h, w) -> (h, w) ints."""
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def slide_inference(window_fn, x: torch.Tensor, crop, stride, num_classes: int = 1) -> torch.Tensor:
    """mmseg's sliding window: x [1, 3, H, W] -> averaged outputs [1, K, H, W].

    Windows of ``crop`` (an int or (h, w); clipped to the image) every ``stride`` (int or (h, w)) pixels, the
    last one flush with the border; ``window_fn(x_crop [1, 3, h, w]) -> [1, K, h, w]``. A crop that covers
    the image is one window.
    """
    H, W = x.shape[-2:]
    (ch, cw), (sh, sw) = hw(crop), hw(stride)
    gh = max(H - ch + sh - 1, 0) // sh + 1
    gw = max(W - cw + sw - 1, 0) // sw + 1
    out = None
    count = torch.zeros(1, 1, H, W)
    for i in range(gh):
        for j in range(gw):
            y2, x2 = min(i * sh + ch, H), min(j * sw + cw, W)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            lg = window_fn(x[..., y1:y2, x1:x2]).cpu()
            if out is None:
                out = torch.zeros(1, lg.shape[1], H, W)
            out[..., y1:y2, x1:x2] += lg
            count[..., y1:y2, x1:x2] += 1
    return out / count


def progress(it, total: int, desc: str, enabled: bool):
    """``it`` wrapped in a tqdm bar when enabled and there is more than one step (no one-step ``1/1`` bars)."""
    if not enabled or total <= 1:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False)


class SyncStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch under torchrun (all-reduced
    float64 sums of x, x^2 and the count), so every rank normalises like one process and holds the running
    statistics one process would. One process computes them the same way (without the all-reduce), so the two
    agree to rounding. Its input must be constant (frozen encoder features): no gradient flows through the
    statistics. A bf16 / fp16 input (autocast) is normalised in float32 (the float64 statistics of the input
    as given). In eval mode it is ``nn.BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        info = D.current()
        assert not x.requires_grad, "SyncStatsBatchNorm2d normalises frozen features only"
        xd = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
        s = torch.cat([xd.sum(1), (xd * xd).sum(1), torch.tensor([xd.shape[1]], dtype=torch.float64,
                                                                  device=x.device)])
        s = D.all_reduce_sum(s, info)
        C = x.shape[1]
        n = float(s[-1])
        mean = s[:C] / n
        var = (s[C:2 * C] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            unbiased = var * (n / (n - 1)) if n > 1 else var
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        dt = torch.promote_types(x.dtype, self.weight.dtype)  # float32 for bf16 / fp16 input, else x's dtype
        scale = (var + self.eps).rsqrt().to(dt)
        y = (x.to(dt) - mean.to(dt).view(1, C, 1, 1)) * scale.view(1, C, 1, 1)
        return y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)


def as_numeric(x, what: str, kinds: str, dtype, expected: str) -> np.ndarray:
    """An array / tensor as a numpy array of ``dtype``; DataError when its dtype kind is not in ``kinds``."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in kinds:
        raise DataError(f"{what} must {expected}, got dtype {a.dtype}")
    return a.astype(dtype, copy=False)


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x)
