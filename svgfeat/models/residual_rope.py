"""SVG-T2I residual encoder: a DeiT-III-S ViT with LayerScale and learnable mixed RoPE (no abs. position).

Behaviour follows the SVG-T2I Autoencoder-R ``extra_vit`` (RoPE-Mixed, Heo et al. 2024); parameter names
match its ``extra_vit.*`` keys (``patch_embed.proj``, ``cls_token``, ``freqs``, ``freqs_t_x/_y``,
``blocks.i.{norm1, attn.qkv, attn.proj, gamma_1, norm2, mlp.fc1, mlp.fc2, gamma_2}``, ``norm``,
``heads.0`` / ``heads.2``); the unused classifier ``head.*`` is not built.

Per block b and head h, rotary pair p of the query/key at patch (row r, col c) turns by the angle
``c * freqs[0, b, h*P + p] + r * freqs[1, b, h*P + p]`` (P = head_dim / 2, integer positions); the pair is
the *adjacent* elements (2p, 2p+1). The class token is not rotated. Positions come from the stored
``grid x grid`` buffers (grid = img_size / patch, 64 for the released 1024 build) whenever the image has
exactly grid**2 patches -- also for a non-square input, as the official code does -- and from the actual
``w``-wide grid otherwise. Runs at any size that is a multiple of the patch size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def grid_positions(n_cols: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_x, t_y) float32 [n_rows * n_cols]: column and row of each patch in row-major order."""
    t = torch.arange(n_cols * n_rows, dtype=torch.float32)
    return t % n_cols, torch.div(t, n_cols, rounding_mode="floor")


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2p, 2p+1) of x [B, H, N, D] by angles given as cos/sin [H, N, D/2]."""
    xf = x.float().unflatten(-1, (-1, 2))            # [B, H, N, D/2, 2]
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _RoPEAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin):  # x [B, 1+N, D]; cos/sin [H, N, hd/2]
        B, N1, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N1, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [B,H,1+N,hd]
        q = torch.cat([q[:, :, :1], rotate_pairs(q[:, :, 1:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :1], rotate_pairs(k[:, :, 1:], cos, sin)], dim=2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # manual, as the reference
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N1, D))


class _Block(nn.Module):
    """Pre-LN block with LayerScale: x + g1 * attn(norm1(x)); x + g2 * mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _RoPEAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, mlp_dim)
        self.gamma_1 = nn.Parameter(torch.full((dim,), 1e-4))
        self.gamma_2 = nn.Parameter(torch.full((dim,), 1e-4))

    def forward(self, x, cos, sin):
        x = x + self.gamma_1 * self.attn(self.norm1(x), cos, sin)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


def _init_freqs(depth: int, heads: int, head_dim: int, theta: float = 100.0) -> torch.Tensor:
    """RoPE-Mixed initial frequencies [2, depth, heads * head_dim / 2]: per head a random direction."""
    mag = 1.0 / theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim)
    fx, fy = [], []
    for _ in range(depth * heads):
        a = torch.rand(1) * 2 * math.pi
        fx.append(torch.cat([mag * torch.cos(a), mag * torch.cos(math.pi / 2 + a)]))
        fy.append(torch.cat([mag * torch.sin(a), mag * torch.sin(math.pi / 2 + a)]))
    return torch.stack([torch.stack(fx), torch.stack(fy)]).reshape(2, depth, heads * head_dim // 2)


class ResidualRoPEEncoder(nn.Module):
    """Image [B, 3, H, W] (ImageNet-normalised) -> residual channels [B, out_dim, H/p, W/p].

    Defaults are the SVG-T2I Autoencoder-R residual encoder: 12 layers, width 384, 6 heads, MLP 1536,
    patch 16, position buffers of a 1024-px (64 x 64) grid, head 384 -> 384 -> 8.
    """

    arch = "rope_mixed"

    def __init__(self, image_size: int = 1024, patch_size: int = 16, depth: int = 12, dim: int = 384,
                 heads: int = 6, mlp_dim: int = 1536, out_dim: int = 8, **_unused):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if dim % heads or (dim // heads) % 4:
            raise ValueError(f"width {dim} with {heads} heads: head dim must be a multiple of 4")
        self.config = dict(arch=self.arch, image_size=image_size, patch_size=patch_size, depth=depth, dim=dim,
                           heads=heads, mlp_dim=mlp_dim, out_dim=out_dim)
        self.patch_size, self.num_heads, self.out_dim = patch_size, heads, out_dim
        self.grid = image_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim).normal_(std=0.02))
        self.blocks = nn.ModuleList([_Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.freqs = nn.Parameter(_init_freqs(depth, heads, dim // heads))
        t_x, t_y = grid_positions(self.grid, self.grid)
        self.register_buffer("freqs_t_x", t_x)
        self.register_buffer("freqs_t_y", t_y)
        self.heads = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def positions(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_x, t_y) [h*w] for an h x w patch grid: the stored grid when h*w == grid**2 (official quirk)."""
        if h * w == self.freqs_t_x.numel():
            return self.freqs_t_x.float(), self.freqs_t_y.float()
        t_x, t_y = grid_positions(w, h)
        return t_x.to(self.freqs.device), t_y.to(self.freqs.device)

    def angles(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [depth, heads, h*w, head_dim/2] of the rotation angles (float32)."""
        t_x, t_y = self.positions(h, w)
        f = self.freqs.float()                                       # [2, depth, heads*P]
        ang = t_x[None, :, None] * f[0][:, None, :] + t_y[None, :, None] * f[1][:, None, :]  # [depth, N, heads*P]
        ang = ang.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)    # [depth, heads, N, P]
        return torch.cos(ang), torch.sin(ang)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}")
        h, w = H // p, W // p
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)             # [B, h*w, D]
        t = torch.cat([self.cls_token.expand(B, -1, -1).to(t.dtype), t], dim=1)  # [B, 1+h*w, D]
        cos, sin = self.angles(h, w)
        for i, blk in enumerate(self.blocks):
            t = blk(t, cos[i], sin[i])
        t = self.norm(t)[:, 1:]                                             # drop class token
        return self.heads(t).transpose(1, 2).reshape(B, self.out_dim, h, w)


def infer_rope_config(sd: dict, heads: int = 6) -> dict:
    """ResidualRoPEEncoder kwargs from an ``extra_vit`` state dict (the head count is not in the weights)."""
    dim = sd["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = int(round(math.sqrt(sd["freqs_t_x"].numel())))
    patch = sd["patch_embed.proj.weight"].shape[-1]
    return dict(arch="rope_mixed", image_size=grid * patch, patch_size=patch, depth=depth, dim=dim, heads=heads,
                mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0], out_dim=sd["heads.2.weight"].shape[0])
