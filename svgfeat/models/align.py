"""Distribution alignment of the residual channels to the DINO channels.

Official (``batch``) rule, with scalars computed over the whole batch and detached:
    mu_X    = mean_c( mean_{b,n} X[b,c,n] )
    sigma_X = mean_c( std_{b,n} X[b,c,n] )        (unbiased per-channel std, then averaged)
    R'      = (R - mu_R) / (sigma_R + 1e-6) * sigma_D + mu_D

``fixed`` mode uses the same four scalars frozen from a dataset pass (see :class:`AlignmentStats`),
so an image's features no longer depend on its batch-mates.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6
MODES = ("batch", "fixed")


def scalar_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, C, h, w] -> (mean of per-channel means, mean of per-channel unbiased stds), fp32 scalars."""
    x = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)  # [C, B*h*w]
    return x.mean(dim=1).mean(), x.std(dim=1).mean()


class DistributionAlign(nn.Module):
    """Aligns residual [B, r, h, w] to DINO [B, C, h, w]; mode 'batch' (official) or 'fixed'."""

    def __init__(self, mode: str = "batch"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"alignment mode {mode!r}: expected one of {MODES}")
        self.mode = mode
        # fixed statistics: [mu_D, sigma_D, mu_R, sigma_R] (NaN until set)
        self.register_buffer("fixed_stats", torch.full((4,), float("nan"), dtype=torch.float64))

    @property
    def has_fixed_stats(self) -> bool:
        return bool(torch.isfinite(self.fixed_stats).all())

    def set_fixed_stats(self, stats) -> None:
        """stats: dict with mu_dino, sigma_dino, mu_res, sigma_res (or a 4-sequence in that order)."""
        if isinstance(stats, dict):
            stats = [stats["mu_dino"], stats["sigma_dino"], stats["mu_res"], stats["sigma_res"]]
        self.fixed_stats.copy_(torch.as_tensor([float(s) for s in stats], dtype=torch.float64))

    def fixed_stats_dict(self) -> dict:
        mu_d, s_d, mu_r, s_r = (float(v) for v in self.fixed_stats)
        return dict(mu_dino=mu_d, sigma_dino=s_d, mu_res=mu_r, sigma_res=s_r)

    def forward(self, dino: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.mode == "batch":
            mu_d, s_d = scalar_stats(dino)
            mu_r, s_r = scalar_stats(residual)
        else:
            if not self.has_fixed_stats:
                raise RuntimeError("alignment='fixed' needs statistics: compute them with "
                                   "svgfeat.models.align.AlignmentStats (or `svgfeat stats`) and set_fixed_stats()")
            mu_d, s_d, mu_r, s_r = self.fixed_stats.float()
        out = (residual.float() - mu_r) / (s_r + EPS) * s_d + mu_d
        return out.to(residual.dtype)


class AlignmentStats:
    """Streaming, batch-size independent computation of the fixed alignment statistics.

    Accumulates per-channel sums in float64 over every token of every image, so the result is the
    ``batch`` statistics of the whole dataset taken as one batch.
    """

    def __init__(self):
        self._acc = {}

    def update(self, dino: torch.Tensor, residual: torch.Tensor) -> None:
        """dino [B, C, h, w], residual [B, r, h, w] (raw, *before* alignment)."""
        for name, x in (("dino", dino), ("res", residual)):
            x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
            n, s, ss = self._acc.get(name, (0, 0.0, 0.0))
            self._acc[name] = (n + x.shape[1], s + x.sum(1), ss + (x * x).sum(1))

    def merge(self, other: "AlignmentStats") -> "AlignmentStats":
        for name, (n, s, ss) in other._acc.items():
            n0, s0, ss0 = self._acc.get(name, (0, 0.0, 0.0))
            self._acc[name] = (n0 + n, s0 + s, ss0 + ss)
        return self

    def compute(self) -> dict:
        out = {}
        for name, key in (("dino", "dino"), ("res", "res")):
            if name not in self._acc:
                raise RuntimeError("AlignmentStats.compute() called before any update()")
            n, s, ss = self._acc[name]
            mean = s / n
            var = (ss - n * mean * mean) / max(n - 1, 1)
            out[f"mu_{key}"] = float(mean.mean())
            out[f"sigma_{key}"] = float(var.clamp_min(0).sqrt().mean())
        return out
