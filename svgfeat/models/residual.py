"""Residual encoder: a small ViT whose per-token MLP head yields the SVG detail channels.

Parameter names follow torchvision's ``VisionTransformer`` (``conv_proj``, ``class_token``,
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_i.*``, ``encoder.ln``) plus the SVG head
``heads.0`` / ``heads.2``, so the official ``extra_vit.*`` keys load one-to-one. Unlike torchvision's
model it runs at any size that is a multiple of the patch size by bicubic interpolation of the
learned position embedding (at the trained size it is bit-identical to the official model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _EncoderBlock(nn.Module):
    """Pre-LN block: x + MHA(ln_1(x)); x + MLP(ln_2(x)). MLP = Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x):  # x: [B, N, D]
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class _Encoder(nn.Module):
    def __init__(self, seq_len: int, depth: int, dim: int, heads: int, mlp_dim: int, dropout: float,
                 attn_dropout: float):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_len, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(*[
            _EncoderBlock(dim, heads, mlp_dim, dropout, attn_dropout) for _ in range(depth)])
        for i, name in enumerate(list(self.layers._modules)):  # torchvision names: encoder_layer_{i}
            self.layers._modules[f"encoder_layer_{i}"] = self.layers._modules.pop(name)
        self.ln = nn.LayerNorm(dim, eps=1e-6)


class ResidualEncoder(nn.Module):
    """Image [B, 3, H, W] (ImageNet-normalised) -> residual channels [B, out_dim, H/p, W/p].

    Defaults are the official SVG residual ViT: 6 layers, width 384, 8 heads, MLP 1536, patch 16,
    trained at 256 px (16 x 16 grid), head 384 -> 384 -> 8.
    """

    def __init__(self, image_size: int = 256, patch_size: int = 16, depth: int = 6, dim: int = 384,
                 heads: int = 8, mlp_dim: int = 1536, out_dim: int = 8, dropout: float = 0.1,
                 attn_dropout: float = 0.1):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.config = dict(image_size=image_size, patch_size=patch_size, depth=depth, dim=dim, heads=heads,
                           mlp_dim=mlp_dim, out_dim=out_dim, dropout=dropout, attn_dropout=attn_dropout)
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.out_dim = out_dim
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = _Encoder(self.grid * self.grid + 1, depth, dim, heads, mlp_dim, dropout, attn_dropout)
        self.heads = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def pos_embedding_for(self, h: int, w: int) -> torch.Tensor:
        """Position embedding [1, 1 + h*w, D], bicubically resized from the trained grid when needed."""
        pe = self.encoder.pos_embedding
        if (h, w) == (self.grid, self.grid):
            return pe
        cls_pe, grid_pe = pe[:, :1], pe[:, 1:]
        D = pe.shape[-1]
        grid_pe = grid_pe.reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)
        grid_pe = F.interpolate(grid_pe.float(), size=(h, w), mode="bicubic", align_corners=False)
        grid_pe = grid_pe.to(pe.dtype).permute(0, 2, 3, 1).reshape(1, h * w, D)
        return torch.cat([cls_pe, grid_pe], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}")
        h, w = H // p, W // p
        t = self.conv_proj(x).flatten(2).transpose(1, 2)                  # [B, h*w, D]
        t = torch.cat([self.class_token.expand(B, -1, -1), t], dim=1)     # [B, 1+h*w, D]
        t = self.encoder.dropout(t + self.pos_embedding_for(h, w))
        t = self.encoder.ln(self.encoder.layers(t))[:, 1:]                # drop class token
        return self.heads(t).transpose(1, 2).reshape(B, self.out_dim, h, w)
