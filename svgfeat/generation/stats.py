"""Per-channel latent standardisation for diffusion (SVG ``feature_norm``).

The statistics files are read and written by :mod:`svgfeat.cache.stats` (re-exported here).

Tokens for the DiT are channel-last and standardised per channel: x = (z - mean_c) / std_c, with
z [B,C,h,w] -> tokens [B,h*w,C] in row-major order. The official file ``dinov3_sp_stats.pt`` is
``{"dinov3_sp_mean": [1,1,C], "dinov3_sp_std": [1,1,C]}`` (float32).
"""

from __future__ import annotations

import numpy as np
import torch

from ..cache.stats import MEAN_KEY, STD_KEY, load_stats, save_stats  # noqa: F401  (stats IO lives in the cache layer)
from ..errors import ConfigError


def _vec(v, C: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).reshape(-1)
    if t.numel() < C:
        raise ConfigError(f"latent stats: {name} has {t.numel()} channels, the latent has {C}")
    return t[:C].to(like.device, torch.float32)  # official code slices [:C]


def normalize_tokens(z: torch.Tensor, mean, std) -> torch.Tensor:
    """z [B,C,h,w] -> standardised tokens [B,h*w,C] float32."""
    if z.dim() != 4:
        raise ConfigError(f"normalize_tokens: expected a latent grid [B,C,h,w], got {tuple(z.shape)}")
    C = z.shape[1]
    tok = z.float().flatten(2).transpose(1, 2)
    return (tok - _vec(mean, C, z, "mean")) / _vec(std, C, z, "std")


def denormalize_tokens(x: torch.Tensor, mean, std, h: int | None = None, w: int | None = None) -> torch.Tensor:
    """Tokens [B,N,C] -> latent grid [B,C,h,w] float32 (x*std + mean). h, w default to a square grid."""
    if x.dim() != 3:
        raise ConfigError(f"denormalize_tokens: expected tokens [B,N,C], got {tuple(x.shape)}")
    B, N, C = x.shape
    if h is None or w is None:
        h = w = int(round(N ** 0.5))
    if h * w != N:
        raise ConfigError(f"denormalize_tokens: grid {h}x{w} does not hold {N} tokens")
    z = x.float() * _vec(std, C, x, "std") + _vec(mean, C, x, "mean")
    return z.transpose(1, 2).reshape(B, C, h, w)
