"""LDM / taming convolutional decoder (the SVG pixel decoder), built from an official ``ddconfig``.

Latent [B, z_channels, h, w] -> image [B, out_ch, h * 2**(L-1), w * 2**(L-1)], L = len(ch_mult),
roughly in [-1, 1] (no tanh, no clamp). Module names match the official ``decoder.*`` keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DDCONFIG_KEYS = ("z_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution",
                 "in_channels", "out_ch", "dropout")

# the released SVG decoder
DEFAULT_DDCONFIG = dict(z_channels=392, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                        attn_resolutions=[16], resolution=256, in_channels=3, out_ch=3, dropout=0.0)


def official_ddconfig(dd: dict) -> dict:
    """The decoder config that an official ``ddconfig`` really builds.

    The official LDM ``Decoder`` of SVG and SVG-T2I ignores ``attn_resolutions`` on the up path: it puts an
    AttnBlock after every ResBlock of the lowest-resolution level only (e.g. the SVG-T2I "woattn" configs,
    ``attn_resolutions: []``, still have them). This decoder honours ``attn_resolutions``, so an official
    config is translated to ``[resolution // 2**(levels-1)]`` (the lowest level); for the released SVG
    config ([16] at 256) that is the same list.
    """
    out = {k: dd[k] for k in DDCONFIG_KEYS if k in dd}
    n = len(out.get("ch_mult", DEFAULT_DDCONFIG["ch_mult"]))
    out["attn_resolutions"] = [int(out.get("resolution", 256)) // 2 ** (n - 1)]
    return out


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.dropout, self.conv2 = _norm(cout), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv projections."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)   # [B, HW, C]
        k = self.k(h).reshape(B, C, H * W)                   # [B, C, HW]
        v = self.v(h).reshape(B, C, H * W)                   # [B, C, HW]
        w = torch.softmax(torch.bmm(q, k) * (C ** -0.5), dim=2)  # [B, HW(q), HW(k)]
        out = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """The LDM decoder. Build with ``Decoder(**ddconfig)``; extra official keys are ignored."""

    def __init__(self, z_channels: int = 392, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 attn_resolutions=(16,), resolution: int = 256, in_channels: int = 3, out_ch: int = 3,
                 dropout: float = 0.0, **_unused):
        super().__init__()
        ch_mult = list(ch_mult)
        self.config = dict(z_channels=z_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                           attn_resolutions=list(attn_resolutions), resolution=resolution,
                           in_channels=in_channels, out_ch=out_ch, dropout=dropout)
        n = len(ch_mult)
        self.upsample_factor = 2 ** (n - 1)
        block_in = ch * ch_mult[-1]
        res = resolution // self.upsample_factor
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        up = []
        for level in reversed(range(n)):  # lowest resolution first; stored so that up[0] is the highest
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, stage)
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, z_channels, h, w] -> [B, out_ch, h*f, w*f] with f = upsample_factor."""
        if z.ndim != 4 or z.shape[1] != self.config["z_channels"]:
            raise ValueError(f"decoder expects [B, {self.config['z_channels']}, h, w], got {tuple(z.shape)}")
        # a latent assembled from token maps is often channels-last in memory; CPU convolutions take another
        # (measurably less accurate: 4e-4 vs 1e-5 on the SVG-T2I R512 fixture) kernel path for it
        h = self.conv_in(z.contiguous())
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
