"""The SVG diffusion transformer (official ``models_SVG.DiT`` layout), its variants and its weight files.

A DiT with patch size 1 over SVG latent tokens: a per-token ``ln1`` Linear(C_in -> hidden), a fixed 2D
sin-cos position table, adaLN-Zero blocks with per-head QK-LayerNorm, and a final adaLN layer whose output
has ``2*C_in`` channels when ``learn_sigma`` (the official layout; only the first ``C_in`` are the velocity).

Time convention: t=0 is noise, t=1 is data; ``t`` enters the sinusoidal embedding in [0,1] (not x1000).
State-dict key names are exactly the official ones, so ``{"ema": model.state_dict()}`` is an official file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checkpoints as ck
from ..errors import CheckpointError, ConfigError
from .registry import register_model

# --------------------------------------------------------------------------------------------------------
# config


@dataclass
class DiTConfig:
    """Hyper-parameters of :class:`SVGDiT` (names as in the official YAML ``model.params``)."""

    input_size: int = 16          # side of the square latent grid the stored pos_embed is built for
    in_channels: int = 392
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000       # the null (unconditional) class is index num_classes
    learn_sigma: bool = True      # official: output 2*in_channels, first half = velocity
    class_dropout_prob: float = 0.1
    qk_norm: bool = True

    def __post_init__(self):
        for name in ("input_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"DiT config: {name} must be a positive int, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"DiT config: hidden_size {self.hidden_size} is not divisible by "
                              f"num_heads {self.num_heads}")
        if (self.hidden_size // 2) % 2:
            raise ConfigError(f"DiT config: hidden_size must be a multiple of 4 for the 2D sin-cos table, "
                              f"got {self.hidden_size}")
        if not 0.0 <= float(self.class_dropout_prob) < 1.0:
            raise ConfigError(f"DiT config: class_dropout_prob must be in [0,1), got {self.class_dropout_prob}")

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        """Build from a dict (svgfeat JSON or official ``model.params``); official-only keys are checked."""
        d = dict(d)
        if d.pop("patch_size", 1) != 1:
            raise ConfigError("DiT config: only patch_size 1 (the SVG DiT) is supported")
        if d.pop("use_swiglu", False):
            raise ConfigError("DiT config: use_swiglu=true is not supported (the released SVG DiT uses GELU)")
        if d.pop("head_dim", None) not in (None, d.get("hidden_size", 1152) // d.get("num_heads", 16)):
            raise ConfigError("DiT config: a head_dim other than hidden_size/num_heads is not supported")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"DiT config: unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# embeddings


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """MAE-style fixed 2D sin-cos table -> float32 [h*w, dim] (row-major tokens).

    The first dim/2 channels encode the column index, the last dim/2 the row index (as the official
    ``np.meshgrid(grid_w, grid_h)`` ordering does); each half is [sin, cos] of pos * 10000^(-k/(dim/4)).
    Computed in float64 like the reference, then cast.
    """
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)
    return torch.from_numpy(emb).float()


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t [B] (float, used as given: [0,1]) -> float32 [B, dim], [cos, sin] order."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):  # [B] -> [B, hidden]
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table [num_classes + 1, hidden]; index num_classes is the null class used for CFG."""

    def __init__(self, num_classes: int, hidden: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y, drop_mask=None):
        """y long [B]; drop_mask bool [B] (or None: random with p=dropout_prob in training) -> [B, hidden]."""
        if drop_mask is None and self.training and self.dropout_prob > 0:
            drop_mask = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
        if drop_mask is not None:
            y = torch.where(drop_mask.to(y.device), torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


# --------------------------------------------------------------------------------------------------------
# transformer


def modulate(x, shift, scale):  # x [B,N,D], shift/scale [B,D]
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-5) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-5) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # [B,N,D] -> [B,N,D]
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += gate*attn(mod(LN(x))); x += gate*mlp(mod(LN(x)))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):  # x [B,N,D], c [B,D]
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SVGDiT(nn.Module):
    """SVG DiT. ``forward(x [B,N,C], t [B] in [0,1], y [B] long) -> velocity [B,N,C]`` (dtype of the weights).

    ``N = h*w`` tokens in row-major order of the latent grid; for grids other than
    ``input_size x input_size`` the sin-cos table is recomputed (pass ``grid=(h, w)`` unless it is square).
    """

    def __init__(self, config: DiTConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = DiTConfig()
        cfg = DiTConfig.from_dict({**(config.to_dict() if isinstance(config, DiTConfig) else config), **overrides})
        self.config = cfg
        self.in_channels = cfg.in_channels
        self.learn_sigma = cfg.learn_sigma
        self.out_channels = 2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels
        self.num_classes = cfg.num_classes
        D = cfg.hidden_size
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D, cfg.class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.input_size ** 2, D), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.ln1 = nn.Linear(cfg.in_channels, D)
        self.final_layer = FinalLayer(D, self.out_channels)
        self._pe_cache: dict = {}
        self.provenance: dict = {}
        self.initialize_weights()

    def initialize_weights(self):
        """Official init: xavier Linears, zero biases; N(0,.02) label table and t-MLP; zeroed adaLN/final."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        n = self.config.input_size
        self.pos_embed.data.copy_(sincos_pos_embed_2d(self.config.hidden_size, n, n).unsqueeze(0))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for lin in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                    self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _pos_embed(self, N: int, grid, dtype, device) -> torch.Tensor:
        if grid is None:
            if N == self.pos_embed.shape[1]:
                return self.pos_embed
            s = math.isqrt(N)
            if s * s != N:
                raise ConfigError(f"SVGDiT: {N} tokens is not a square grid; pass grid=(h, w) with h*w == {N}")
            grid = (s, s)
        h, w = int(grid[0]), int(grid[1])
        if h * w != N:
            raise ConfigError(f"SVGDiT: grid {h}x{w} has {h * w} tokens but x has {N}")
        if h == w == self.config.input_size:
            return self.pos_embed
        key = (h, w, dtype, str(device))
        if key not in self._pe_cache:
            self._pe_cache[key] = sincos_pos_embed_2d(self.config.hidden_size, h, w)[None].to(device, dtype)
        return self._pe_cache[key]

    def forward_full(self, x, t, y, grid=None, drop_mask=None):
        """All output channels: x [B,N,C], t [B] float, y [B] long -> [B, N, out_channels].

        ``drop_mask`` bool [B] forces label dropout (training with an explicit generator); by default
        labels are dropped with ``class_dropout_prob`` in training mode only.
        """
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ConfigError(f"SVGDiT: expected tokens [B, N, {self.in_channels}], got {tuple(x.shape)}")
        B, N, _ = x.shape
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,) or y.shape != (B,):
            raise ConfigError(f"SVGDiT: t and y must have shape [{B}], got {tuple(t.shape)} and {tuple(y.shape)}")
        h = self.ln1(x) + self._pos_embed(N, grid, self.ln1.weight.dtype, x.device)
        c = self.t_embedder(t) + self.y_embedder(y, drop_mask)
        for block in self.blocks:
            h = block(h, c)
        return self.final_layer(h, c)

    def forward(self, x, t, y, grid=None, drop_mask=None):
        """Velocity: the first C channels of :meth:`forward_full` -> [B, N, C]."""
        return self.forward_full(x, t, y, grid, drop_mask)[..., : self.in_channels]


# --------------------------------------------------------------------------------------------------------
# registered variants


def _variant(defaults: dict, overrides: dict) -> SVGDiT:
    return SVGDiT(DiTConfig.from_dict({**defaults, **overrides}))


@register_model("dit")
def svg_dit_b(**overrides) -> SVGDiT:
    """SVG-B: hidden 768, depth 12, 12 heads (~130M)."""
    return _variant(dict(hidden_size=768, depth=12, num_heads=12), overrides)


@register_model("dit")
def svg_dit_l(**overrides) -> SVGDiT:
    """SVG-L: hidden 1024, depth 24, 16 heads (~458M)."""
    return _variant(dict(hidden_size=1024, depth=24, num_heads=16), overrides)


@register_model("dit")
def svg_dit_xl(**overrides) -> SVGDiT:
    """SVG-XL: hidden 1152, depth 28, 16 heads (676,437,904 params incl. pos_embed; the released model)."""
    return _variant(dict(hidden_size=1152, depth=28, num_heads=16), overrides)


@register_model("dit")
def test_dit_tiny(**overrides) -> SVGDiT:
    """Tiny DiT for tests: hidden 64, depth 2, 4 heads (392-channel tokens on a 16x16 grid by default)."""
    return _variant(dict(hidden_size=64, depth=2, num_heads=4), overrides)


# --------------------------------------------------------------------------------------------------------
# weight files (reading/writing goes through svgfeat.checkpoints)


def infer_dit_config(sd: dict) -> DiTConfig:
    """Read hidden/depth/heads/in_channels/num_classes/input_size/learn_sigma from official key shapes."""
    need = ["ln1.weight", "pos_embed", "y_embedder.embedding_table.weight", "final_layer.linear.weight",
            "blocks.0.mlp.fc1.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"not an SVG DiT state dict: missing {missing} (found {len(sd)} keys, e.g. "
                              f"{sorted(sd)[:5]})")
    hidden, cin = sd["ln1.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    n_pos = sd["pos_embed"].shape[1]
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise CheckpointError(f"pos_embed has {n_pos} positions, not a square grid")
    qn = sd.get("blocks.0.attn.q_norm.weight")
    if qn is None:
        raise CheckpointError("cannot infer num_heads: the checkpoint has no attn.q_norm (qk_norm off); "
                              "pass config= (the official YAML or a dict)")
    return DiTConfig(input_size=side, in_channels=cin, hidden_size=hidden, depth=depth,
                     num_heads=hidden // qn.shape[0], mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
                     num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
                     learn_sigma=sd["final_layer.linear.weight"].shape[0] == 2 * cin, qk_norm=True)


def read_dit_config(config) -> DiTConfig:
    """DiTConfig | dict | path to an official YAML (``model.params``) or svgfeat JSON -> DiTConfig."""
    if isinstance(config, DiTConfig):
        return config
    if isinstance(config, (str, Path)):
        p = Path(config)
        if not p.exists():
            raise ConfigError(f"DiT config file not found: {p}")
        if p.suffix in (".yaml", ".yml"):
            config = ck.load_yaml(p)
        else:
            from ..regular_files import read_text

            try:
                config = json.loads(read_text(p, "DiT config", error=ConfigError))
            except (json.JSONDecodeError, RecursionError) as e:
                raise ConfigError(f"DiT config {p} is not valid JSON/YAML: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"DiT config: expected a dict, DiTConfig or file path, got {type(config).__name__}")
    if isinstance(config.get("model"), dict):  # official YAML
        config = config["model"].get("params", config["model"])
    if isinstance(config.get("config"), dict):  # svgfeat {"kind": "dit", "config": {...}}
        config = config["config"]
    return DiTConfig.from_dict(config)


def save_dit(model: SVGDiT, path, numerics: dict | None = None) -> Path:
    """svgfeat format: safetensors with the config JSON in its metadata (key ``svgfeat_config``) + sidecar JSON;
    ``numerics`` (a :meth:`svgfeat.numerics.Numerics.record`) is stored next to the config when given."""
    meta = {"kind": "dit", "config": model.config.to_dict(), **({"numerics": numerics} if numerics else {})}
    return ck.save_safetensors(path, model.state_dict(), meta)


def export_official_dit(model: SVGDiT, path) -> tuple[Path, Path]:
    """Write the official layout: ``{"ema": state_dict}`` .pt and a ``model.params`` YAML beside it."""
    import yaml

    from ..atomic import write_bytes_atomic

    p = Path(path)
    ck.save_torch(p, {"ema": {k: v.detach().cpu() for k, v in model.state_dict().items()}})
    c = model.config
    params = dict(input_size=c.input_size, patch_size=1, in_channels=c.in_channels, hidden_size=c.hidden_size,
                  depth=c.depth, num_heads=c.num_heads, mlp_ratio=float(c.mlp_ratio),
                  class_dropout_prob=float(c.class_dropout_prob), num_classes=c.num_classes,
                  learn_sigma=c.learn_sigma, use_swiglu=False, qk_norm=c.qk_norm)
    doc = {"basic": {"rf": True, "shift": 0.4, "image_size": 16 * c.input_size, "feature_norm": True},
           "model": {"target": "models.models_SVG.DiT", "params": params}}
    y = p.with_suffix(".yaml")
    write_bytes_atomic(y, yaml.safe_dump(doc, sort_keys=False).encode())
    return p, y
