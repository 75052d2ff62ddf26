"""DINOv3's train-mode RoPE rescale augmentation, for a frozen timm DINOv3 backbone.

What the official SVG AE run did: Lightning put the whole model, DINOv3 included, in train mode. For the
DINOv3 ViTs (drop_path 0) the only train-mode effect is RoPE coordinate rescaling (``rescale_coords=2``):
on every forward one scalar s = exp(U(-ln 2, ln 2)) multiplies the patch coordinates (both axes, after
their mapping to [-1, 1]) before the rotary angles 2*pi*coord/period are computed. The DINO features thus
see a random zoom of the position grid. timm's port does not apply it (its augmentation hooks are off
in the DINOv3 configs, and svgfeat keeps the backbone in eval mode anyway).

:class:`RopeRescale` wraps the timm rope module of a :class:`~svgfeat.models.dinov3.DinoV3Backbone`
(``backbone.model.rope``) inside svgfeat -- installed files are not modified. While ``enabled`` it
rebuilds the [sin, cos] embedding from the scaled coordinates; otherwise it returns the wrapped
module's embedding unchanged. The scale is drawn from ``generator`` (the trainer passes a per-step
generator so that resumed and multi-rank runs draw the same values) or the global torch RNG.
With s = 1 the rebuilt embedding equals timm's bit for bit; :func:`install_rope_rescale` checks this
once, so a future timm layout change fails loudly instead of silently.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..errors import ConfigError


def dinov3_rope_coords(h: int, w: int) -> torch.Tensor:
    """DINOv3 patch coordinates [h*w, 2] (row-major): ((i + 0.5) / h, (j + 0.5) / w) mapped to [-1, 1]."""
    ch = torch.arange(0.5, h, dtype=torch.float32) / h
    cw = torch.arange(0.5, w, dtype=torch.float32) / w
    grid = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1)
    return (2.0 * grid - 1.0).flatten(0, 1)


def rope_embed_from_coords(coords: torch.Tensor, periods: torch.Tensor) -> torch.Tensor:
    """coords [N, 2], periods [D/4] -> [N, 2*D] = cat(sin, cos), rotate-half layout (each [N, D])."""
    angles = 2 * math.pi * coords[:, :, None].to(periods) / periods[None, None, :]  # [N, 2, D/4]
    angles = angles.flatten(1)                                                       # [N, D/2]
    sin, cos = angles.sin(), angles.cos()
    return torch.cat([torch.cat([sin, sin], -1), torch.cat([cos, cos], -1)], dim=-1)


class RopeRescale(nn.Module):
    """Wraps a timm ``RotaryEmbeddingDinoV3``; adds the rescale augmentation while ``enabled``."""

    def __init__(self, rope: nn.Module, factor: float = 2.0):
        super().__init__()
        if not factor >= 1.0:
            raise ConfigError(f"RoPE rescale factor must be >= 1 (DINOv3 uses 2), got {factor}")
        self.inner = rope
        self.factor = float(factor)
        self.enabled = False
        self.generator: torch.Generator | None = None
        self.last_scale: float | None = None

    # attributes timm's Eva reads from its rope module
    @property
    def feat_shape(self):
        return self.inner.feat_shape

    def update_feat_shape(self, feat_shape):
        if hasattr(self.inner, "update_feat_shape"):
            self.inner.update_feat_shape(feat_shape)

    def draw_scale(self) -> float:
        lim = math.log(self.factor)
        u = torch.empty(1, dtype=torch.float64).uniform_(-lim, lim, generator=self.generator)
        return float(u.exp())

    def embed(self, shape, scale: float = 1.0, dtype=None) -> torch.Tensor:
        """[h*w, 2*D] embedding for grid ``shape`` with coordinates multiplied by ``scale``."""
        h, w = int(shape[0]), int(shape[1])
        periods = self.inner.periods
        coords = dinov3_rope_coords(h, w).to(periods.device)
        if scale != 1.0:
            coords = coords * torch.tensor(scale, dtype=coords.dtype)
        out = rope_embed_from_coords(coords, periods)
        return out.to(dtype) if dtype is not None else out

    def get_embed(self, shape=None, dtype=None) -> torch.Tensor:
        if not self.enabled:
            return self.inner.get_embed(shape=shape, dtype=dtype)
        if shape is None:
            shape = self.inner.feat_shape
        self.last_scale = self.draw_scale()
        return self.embed(shape, self.last_scale, dtype)

    def forward(self, *args, **kwargs):  # pragma: no cover - Eva only calls get_embed
        return self.inner(*args, **kwargs)


def install_rope_rescale(backbone, factor: float = 2.0) -> RopeRescale:
    """Wrap ``backbone.model.rope`` (idempotent) and check the wrapper reproduces timm at scale 1."""
    model = backbone.model
    rope = getattr(model, "rope", None)
    if isinstance(rope, RopeRescale):
        rope.factor = float(factor)
        return rope
    if rope is None or not hasattr(rope, "periods") or not hasattr(rope, "get_embed"):
        raise ConfigError(f"the backbone's rope module ({type(rope).__name__}) is not timm's DINOv3 RoPE; "
                          "the RoPE rescale augmentation cannot be applied")
    wrapper = RopeRescale(rope, factor)
    ref = rope.get_embed(shape=(3, 5))
    mine = wrapper.embed((3, 5))
    if ref.shape != mine.shape or not torch.allclose(ref.float(), mine.float(), atol=1e-6, rtol=0):
        raise ConfigError("timm's DINOv3 RoPE layout differs from the one svgfeat rebuilds "
                          f"(shapes {tuple(ref.shape)} vs {tuple(mine.shape)}); RoPE rescale is unsupported "
                          "with this timm version")
    model.rope = wrapper
    return wrapper


def remove_rope_rescale(backbone) -> None:
    rope = getattr(backbone.model, "rope", None)
    if isinstance(rope, RopeRescale):
        backbone.model.rope = rope.inner


@contextlib.contextmanager
def rope_rescale_active(wrapper: RopeRescale | None, generator: torch.Generator | None = None):
    """Enable the augmentation (drawing from ``generator``) inside the block; no-op for None."""
    if wrapper is None:
        yield
        return
    wrapper.enabled, wrapper.generator = True, generator
    try:
        yield
    finally:
        wrapper.enabled, wrapper.generator = False, None
