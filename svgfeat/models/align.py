"""Distribution alignment of the residual channels to the DINO channels.

Official (``batch``) rule, with scalars computed over the whole batch and detached:
    mu_X    = mean_c( mean_{b,n} X[b,c,n] )
    sigma_X = mean_c( std_{b,n} X[b,c,n] )        (unbiased per-channel std, then averaged)
    R'      = (R - mu_R) / (sigma_R + 1e-6) * sigma_D + mu_D

``fixed`` mode uses the same four scalars frozen from a dataset pass (see :class:`AlignmentStats`),
so an image's features no longer depend on its batch-mates.
"""

from __future__ import annotations

import numpy as np
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


class ChannelMoments:
    """Streaming per-channel count / sum / sum of squares in float64 over [n, C, ...] tensors or arrays.

    The one accumulator behind every alignment / channel statistic (fixed alignment, AE training with
    global batch statistics, ``svgfeat stats``). ``as_tensor``/``load_tensor`` expose the sums as one
    flat float64 vector [2C + 1] so ranks can all-reduce them.
    """

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def update(self, x) -> None:
        x = x.detach() if torch.is_tensor(x) else torch.from_numpy(np.array(x, dtype=np.float64))
        x = x.double().transpose(0, 1).reshape(x.shape[1], -1)  # [C, n*...]
        s, ss = x.sum(1), (x * x).sum(1)
        self.n += x.shape[1]
        self.s = s if self.s is None else self.s + s.to(self.s.device)
        self.ss = ss if self.ss is None else self.ss + ss.to(self.ss.device)

    def merge(self, other: "ChannelMoments") -> "ChannelMoments":
        if other.s is not None:
            self.load_tensor(other.as_tensor() if self.s is None else self.as_tensor() + other.as_tensor().to(
                self.s.device))
        return self

    def as_tensor(self) -> torch.Tensor:
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.s.device)
        return torch.cat([self.s, self.ss, n])

    def load_tensor(self, t: torch.Tensor) -> "ChannelMoments":
        C = (t.numel() - 1) // 2
        self.s, self.ss, self.n = t[:C].clone(), t[C:2 * C].clone(), int(round(float(t[2 * C])))
        return self

    def reduce(self, fn) -> "ChannelMoments":
        """Replace the sums by ``fn(flat sums)`` (e.g. an all-reduce SUM over ranks)."""
        return self.load_tensor(fn(self.as_tensor()))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and unbiased std (float64 [C])."""
        if self.s is None:
            raise RuntimeError("ChannelMoments.mean_std() called before any update()")
        mean = self.s / self.n
        var = (self.ss - self.n * mean * mean) / max(self.n - 1, 1)
        return mean, var.clamp_min(0).sqrt()

    def scalars(self) -> tuple[float, float]:
        """(mean of per-channel means, mean of per-channel stds): the alignment scalars."""
        mean, std = self.mean_std()
        return float(mean.mean()), float(std.mean())


class AlignmentStats:
    """Streaming, batch-size independent computation of the fixed alignment statistics.

    Accumulates per-channel sums in float64 over every token of every image, so the result is the
    ``batch`` statistics of the whole dataset taken as one batch.
    """

    def __init__(self, dino: ChannelMoments | None = None, res: ChannelMoments | None = None):
        self.dino, self.res = dino or ChannelMoments(), res or ChannelMoments()

    def update(self, dino: torch.Tensor, residual: torch.Tensor) -> None:
        """dino [B, C, h, w], residual [B, r, h, w] (raw, *before* alignment)."""
        self.dino.update(dino)
        self.res.update(residual)

    def merge(self, other: "AlignmentStats") -> "AlignmentStats":
        self.dino.merge(other.dino)
        self.res.merge(other.res)
        return self

    def reduce(self, fn) -> "AlignmentStats":
        """Apply ``fn`` (an all-reduce SUM over ranks) to both sets of sums."""
        self.dino.reduce(fn)
        self.res.reduce(fn)
        return self

    def compute(self) -> dict:
        if self.dino.s is None or self.res.s is None:
            raise RuntimeError("AlignmentStats.compute() called before any update()")
        mu_d, s_d = self.dino.scalars()
        mu_r, s_r = self.res.scalars()
        return {"mu_dino": mu_d, "sigma_dino": s_d, "mu_res": mu_r, "sigma_res": s_r}
