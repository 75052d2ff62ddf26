"""Per-channel latent standardisation for diffusion (SVG ``feature_norm``) and the official stats file.

Tokens for the DiT are channel-last and standardised per channel: x = (z - mean_c) / std_c, with
z [B,C,h,w] -> tokens [B,h*w,C] in row-major order. The official file ``dinov3_sp_stats.pt`` is
``{"dinov3_sp_mean": [1,1,C], "dinov3_sp_std": [1,1,C]}`` (float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError

MEAN_KEY, STD_KEY = "dinov3_sp_mean", "dinov3_sp_std"


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


def load_stats(source) -> dict:
    """Latent stats -> {"mean": float32 [C], "std": float32 [C]} (torch).

    source: the official ``.pt`` ({dinov3_sp_mean, dinov3_sp_std}), an ``.npz``/``.safetensors`` with
    mean/std, a ``stats.json`` (``svgfeat stats``), a cache folder, a dict with mean/std (numpy, torch or
    lists), or an object with ``latent_stats()`` (a cache). The one latent-stats reader
    (``svgfeat.cache.stats.load_stats`` is this function).
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        from ..cache import open_cache

        source = open_cache(source)
    if hasattr(source, "latent_stats"):
        source = source.latent_stats()
        if source is None:
            raise ConfigError("the cache has no latent statistics; run `svgfeat stats CACHE` first or pass stats")
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise ConfigError(f"latent stats file not found: {p}")
        if p.suffix == ".json":
            import json

            from ..regular_files import read_text

            try:
                source = json.loads(read_text(p, "latent stats", error=ConfigError))
            except (ValueError, RecursionError) as e:
                raise ConfigError(f"latent stats {p}: unreadable JSON ({e})") from None
            if isinstance(source, dict) and isinstance(source.get("latent"), dict):
                source = source["latent"]
        elif p.suffix == ".npz":
            from ..regular_files import opened

            try:
                with opened(p, "latent stats", error=ConfigError) as f, np.load(f, allow_pickle=False) as d:
                    source = {k: d[k] for k in d.files}
            except (OSError, ValueError, EOFError) as e:
                raise ConfigError(f"latent stats {p}: not a readable .npz file ({e})") from None
        else:
            from .. import checkpoints as ck

            source = ck.load_file(p)
    if not isinstance(source, dict):
        raise ConfigError(f"latent stats: expected a file, dict or cache, got {type(source).__name__}")
    for mk, sk in ((MEAN_KEY, STD_KEY), ("mean", "std"), ("latent_mean", "latent_std")):
        if mk in source and sk in source:
            mean = torch.as_tensor(np.asarray(source[mk], dtype=np.float32)).reshape(-1)
            std = torch.as_tensor(np.asarray(source[sk], dtype=np.float32)).reshape(-1)
            break
    else:
        raise CheckpointError(f"latent stats: need keys ({MEAN_KEY}, {STD_KEY}) or (mean, std); got {sorted(source)}")
    if mean.shape != std.shape:
        raise ConfigError(f"latent stats: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in size")
    if not torch.all(std > 0):
        raise ConfigError("latent stats: std must be > 0 for every channel")
    return {"mean": mean, "std": std}


def save_stats(path, mean, std) -> Path:
    """Write the official ``dinov3_sp_stats.pt`` layout (float32 [1,1,C] each), atomically."""
    from .. import checkpoints as ck

    p = Path(path)
    m = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(1, 1, -1)
    s = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(1, 1, -1)
    ck.save_torch(p, {MEAN_KEY: m.contiguous(), STD_KEY: s.contiguous()})
    return p
