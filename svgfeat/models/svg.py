"""The SVG encoder/autoencoder: frozen DINOv3 + residual encoder + alignment (+ pixel decoder).

``encode`` returns :class:`SVGFeatures`; ``decode`` maps a latent [B, C+r, h, w] back to pixels.
Weights are read and models built by :mod:`svgfeat.models.build` (``load_encoder``).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from .align import DistributionAlign
from .decoder import DEFAULT_DDCONFIG, Decoder
from .dinov3 import DinoV3Backbone
from .registry import register_model
from .residual import ResidualEncoder
from .residual_rope import ResidualRoPEEncoder

FAMILIES = ("svg", "t2i-r", "t2i-p")
T2I_STAGES = {1: 256, 2: 512, 3: 1024}  # SVG-T2I training stages -> image size

BASE_GROUPS = ("dino", "residual", "latent", "cls", "registers", "pooled")


@dataclass
class SVGFeatures:
    """Features of B images on an h x w patch grid (C DINO channels, r residual channels, R registers).

    dino [B,C,h,w] final-norm patch tokens; residual [B,r,h,w] aligned (None for DINO-only encoders);
    cls [B,C]; registers [B,R,C]; pooled [B,C] mean of patch tokens; layers {block: (cls [B,C],
    patch [B,C,h,w])} normed intermediate outputs. ``latent`` = cat(dino, residual) [B,C+r,h,w].
    """

    dino: torch.Tensor
    residual: torch.Tensor | None
    cls: torch.Tensor
    registers: torch.Tensor
    pooled: torch.Tensor
    layers: dict = field(default_factory=dict)

    @property
    def latent(self) -> torch.Tensor:
        return self.dino if self.residual is None else torch.cat([self.dino, self.residual], dim=1)

    def group(self, name: str) -> torch.Tensor:
        """Tensor of a named group: one of BASE_GROUPS or ``cls_l{i}``, ``pooled_l{i}``, ``dino_l{i}``."""
        if name in ("dino", "cls", "registers", "pooled"):
            return getattr(self, name)
        if name == "latent":
            return self.latent
        if name == "residual":
            if self.residual is None:
                raise ValueError("group 'residual' needs an encoder with residual channels (SVG or SVG-T2I R); "
                                 "this one has none (SVG-T2I P or DINOv3-only): its latent is the DINO channels")
            return self.residual
        for prefix, idx in (("cls_l", 0), ("pooled_l", 2), ("dino_l", 1)):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                i = int(name[len(prefix):])
                if i not in self.layers:
                    raise ValueError(f"group {name!r}: layer {i} was not computed (have {sorted(self.layers)})")
                cls, patch = self.layers[i]
                return (cls, patch, patch.mean(dim=(2, 3)))[idx]
        raise ValueError(f"unknown feature group {name!r}; expected one of {BASE_GROUPS} or cls_l<i>/pooled_l<i>/dino_l<i>")


def layers_needed(groups) -> list[int]:
    """Block indices referenced by ``*_l{i}`` group names."""
    out = set()
    for g in groups:
        for prefix in ("cls_l", "pooled_l", "dino_l"):
            if g.startswith(prefix) and g[len(prefix):].isdigit():
                out.add(int(g[len(prefix):]))
    return sorted(out)


class SVGEncoder(nn.Module):
    """DINOv3 backbone (+ residual encoder, alignment and decoder when an SVG model is loaded).

    ``config``: {"dino": {"variant": str, "overrides": {...}}, "residual": ResidualEncoder kwargs or
    None, "decoder": ddconfig or None, "alignment": "batch"|"fixed", "mask_ratio": float, "name": str,
    "family": "svg"|"t2i-r"|"t2i-p" (optional), "stage": 1|2|3 (optional, SVG-T2I)}. A residual config with
    ``arch="rope_mixed"`` builds the SVG-T2I residual encoder, otherwise the original SVG one.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        dino = self.config["dino"]
        self.backbone = DinoV3Backbone(dino["variant"], **dino.get("overrides", {}))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        res_cfg = self.config.get("residual")
        if res_cfg:
            arch = res_cfg.get("arch", "vit")
            if arch not in ("vit", "rope_mixed"):
                raise ValueError(f"residual arch {arch!r}: expected 'vit' (SVG) or 'rope_mixed' (SVG-T2I R)")
            self.residual = (ResidualRoPEEncoder if arch == "rope_mixed" else ResidualEncoder)(**res_cfg)
        else:
            self.residual = None
        self.align = DistributionAlign(self.config.get("alignment", "batch")) if res_cfg else None
        mask_ratio = float(self.config.get("mask_ratio", -1) or -1)
        if res_cfg and mask_ratio > 0:
            self.mask_token = nn.Parameter(torch.empty(1, self.residual.out_dim, 1).normal_(std=0.02))
        dec_cfg = self.config.get("decoder")
        if dec_cfg and dec_cfg.get("z_channels") != self.latent_channels:
            raise ValueError(f"decoder z_channels={dec_cfg.get('z_channels')} but the latent has "
                             f"{self.latent_channels} channels")
        self.decoder = Decoder(**dec_cfg) if dec_cfg else None
        self.provenance: dict = {"model": self.config.get("name", "custom")}
        self.eval()

    # -------------------------------------------------------------- properties
    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def residual_channels(self) -> int:
        return self.residual.out_dim if self.residual is not None else 0

    @property
    def latent_channels(self) -> int:
        return self.embed_dim + self.residual_channels

    @property
    def family(self) -> str:
        """'svg' (original SVG), 't2i-r' / 't2i-p' (SVG-T2I Autoencoder-R / -P) or 'dinov3' (backbone only)."""
        fam = self.config.get("family")
        if fam:
            return fam
        if self.residual is not None:
            return "t2i-r" if getattr(self.residual, "arch", "vit") == "rope_mixed" else "svg"
        return "t2i-p" if self.decoder is not None else "dinov3"

    @property
    def stage(self) -> int | None:
        """SVG-T2I training stage (1 = 256, 2 = 512, 3 = 1024 px) when known, else None."""
        st = self.config.get("stage")
        return int(st) if st is not None else None

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def alignment(self) -> str | None:
        return self.align.mode if self.align is not None else None

    @property
    def mask_ratio(self) -> float:
        return float(self.config.get("mask_ratio", -1) or -1)

    def set_alignment(self, mode: str, stats: dict | None = None) -> "SVGEncoder":
        """Switch alignment mode; ``stats`` (mu_dino, sigma_dino, mu_res, sigma_res) for 'fixed'."""
        if self.align is None:
            raise ValueError("a DINOv3-only encoder has no residual alignment")
        fresh = DistributionAlign(mode).to(self.align.fixed_stats.device)
        fresh.fixed_stats.copy_(self.align.fixed_stats)
        self.align = fresh
        self.config["alignment"] = mode
        if stats is not None:
            self.align.set_fixed_stats(stats)
        return self

    def train(self, mode: bool = True):
        """The backbone stays in eval mode (frozen) whatever ``mode`` is."""
        super().train(mode)
        self.backbone.eval()
        return self

    # -------------------------------------------------------------- forward
    def _check_input(self, x):
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"expected a float tensor [B, 3, H, W] (ImageNet-normalised), got {got}; "
                             "use svgfeat.preprocess() to convert images")
        if not x.is_floating_point():
            raise ValueError(f"expected a float tensor, got dtype {x.dtype}; use svgfeat.preprocess()")

    def raw_residual(self, x: torch.Tensor) -> torch.Tensor:
        """Residual channels before alignment: [B, r, h, w]."""
        return self.residual(x)

    def forward(self, x: torch.Tensor, layers=None, mask: bool | None = None,
                generator: torch.Generator | None = None) -> SVGFeatures:
        """Differentiable pass (used in training). ``mask`` defaults to ``self.training``."""
        self._check_input(x)
        with torch.no_grad():
            out = self.backbone(x, layers=layers)
        residual = None
        if self.residual is not None:
            r = self.residual(x)
            if (self.training if mask is None else mask) and hasattr(self, "mask_token"):
                gen_dev = generator.device if generator is not None else r.device
                u = torch.rand(r.shape[0], device=gen_dev, generator=generator).to(r.device)
                keep = (u >= self.mask_ratio).to(r.dtype).view(-1, 1, 1, 1)
                r = r * keep + self.mask_token.to(r.dtype).unsqueeze(-1) * (1 - keep)
            residual = self.align(out.patch, r)
        return SVGFeatures(dino=out.patch, residual=residual, cls=out.cls, registers=out.registers,
                           pooled=out.patch.mean(dim=(2, 3)), layers=out.layers)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, layers=None) -> SVGFeatures:
        """x: [B, 3, H, W] float, ImageNet-normalised, H, W multiples of 16 -> SVGFeatures (eval, no grad)."""
        was = self.training
        self.eval()
        try:
            return self.forward(x, layers=layers, mask=False)
        finally:
            self.train(was)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, C+r, h, w] -> image [B, 3, 16h, 16w], roughly in [-1, 1] (not clamped)."""
        if self.decoder is None:
            raise ValueError("this encoder has no pixel decoder: load an SVG autoencoder checkpoint (--svg)")
        was = self.decoder.training
        self.decoder.eval()
        try:
            return self.decoder(latent)
        finally:
            self.decoder.train(was)

    def export_config(self) -> dict:
        cfg = copy.deepcopy(self.config)
        if self.align is not None:
            cfg["alignment"] = self.align.mode
            if self.align.has_fixed_stats:
                cfg["fixed_stats"] = self.align.fixed_stats_dict()
        cfg["latent_channels"] = self.latent_channels
        return cfg


# ------------------------------------------------------------------------- registry
def _svg_config(name, variant, dim, dino_overrides=None, residual=True, decoder=True, **overrides):
    cfg = {"name": name, "dino": {"variant": variant, "overrides": dict(dino_overrides or {})},
           "residual": dict(image_size=256, patch_size=16, depth=6, dim=384, heads=8, mlp_dim=1536, out_dim=8)
           if residual else None,
           "decoder": dict(DEFAULT_DDCONFIG, z_channels=dim + 8) if (residual and decoder) else None,
           "alignment": "batch", "mask_ratio": 0.1 if residual else -1}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@register_model("encoder")
def svg_vits16plus(**overrides) -> SVGEncoder:
    """The released SVG autoencoder: DINOv3 ViT-S/16+ (384) + 8 residual channels = 392."""
    return SVGEncoder(_svg_config("svg_vits16plus", "vit_small_plus", 384, **overrides))


@register_model("encoder")
def random_svg_vits16plus(**overrides) -> SVGEncoder:
    """The full SVG-S+ architecture (DINOv3 ViT-S/16+ + residual + decoder) with RANDOM weights from a fixed seed:
    the embedded default that shows the pipeline without any download; its numbers mean nothing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(overrides.pop("seed", 0))
        return SVGEncoder(_svg_config("random_svg_vits16plus", "vit_small_plus", 384, **overrides))


@register_model("encoder")
def svg_vitb16(**overrides) -> SVGEncoder:
    """SVG on DINOv3 ViT-B/16 (768 + 8 = 776 channels); train it with `svgfeat train-ae`."""
    return SVGEncoder(_svg_config("svg_vitb16", "vit_base", 768, **overrides))


@register_model("encoder")
def svg_vitl16(**overrides) -> SVGEncoder:
    """SVG on DINOv3 ViT-L/16 (1024 + 8 = 1032 channels); train it with `svgfeat train-ae`."""
    return SVGEncoder(_svg_config("svg_vitl16", "vit_large", 1024, **overrides))


def _t2i_config(name: str, has_residual: bool, stage: int | None, **overrides) -> dict:
    if stage is not None and stage not in T2I_STAGES:
        raise ValueError(f"SVG-T2I stage {stage!r}: expected one of {sorted(T2I_STAGES)} (256/512/1024 px)")
    residual = has_residual
    cfg = {"name": name, "family": "t2i-r" if residual else "t2i-p", "stage": stage,
           "dino": {"variant": "vit_small_plus", "overrides": {}},
           "residual": dict(arch="rope_mixed", image_size=1024, patch_size=16, depth=12, dim=384, heads=6,
                            mlp_dim=1536, out_dim=8) if residual else None,
           "decoder": dict(DEFAULT_DDCONFIG, z_channels=392 if residual else 384),
           "alignment": "batch", "mask_ratio": -1}
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


@register_model("encoder")
def svg_t2i_r_vits16plus(stage: int | None = None, **overrides) -> SVGEncoder:
    """SVG-T2I Autoencoder-R: DINOv3 ViT-S/16+ + 12-layer RoPE residual ViT (8 ch) = 392; stage 1/2/3 = 256/512/1024."""
    return SVGEncoder(_t2i_config("svg_t2i_r_vits16plus", True, stage, **overrides))


@register_model("encoder")
def svg_t2i_p_vits16plus(stage: int | None = None, **overrides) -> SVGEncoder:
    """SVG-T2I Autoencoder-P: DINOv3 ViT-S/16+ + pixel decoder, no residual (384 ch); stage 1/2/3 = 256/512/1024."""
    return SVGEncoder(_t2i_config("svg_t2i_p_vits16plus", False, stage, **overrides))


def _register_t2i_stages():
    """svg_t2i_{r,p}_vits16plus_stage{1,2,3}: the released SVG-T2I autoencoders, one name per stage (256/512/1024)."""
    for fam in ("r", "p"):
        for st, px in T2I_STAGES.items():
            def factory(_fam=fam, _st=st, **overrides) -> SVGEncoder:
                return SVGEncoder(_t2i_config(f"svg_t2i_{_fam}_vits16plus_stage{_st}", _fam == "r", _st, **overrides))

            factory.__name__ = f"svg_t2i_{fam}_vits16plus_stage{st}"
            factory.__doc__ = (f"SVG-T2I Autoencoder-{fam.upper()}, stage {st} ({px} px): "
                               + ("392 ch (384 DINOv3 + 8 residual)." if fam == "r" else "384 ch (DINOv3 only)."))
            register_model("encoder")(factory)


_register_t2i_stages()


@register_model("encoder")
def dinov3_vits16plus(**overrides) -> SVGEncoder:
    """DINOv3 ViT-S/16+ alone (no residual, no decoder)."""
    return SVGEncoder(_svg_config("dinov3_vits16plus", "vit_small_plus", 384, residual=False, **overrides))


@register_model("encoder")
def dinov3_vits16(**overrides) -> SVGEncoder:
    return SVGEncoder(_svg_config("dinov3_vits16", "vit_small", 384, residual=False, **overrides))


@register_model("encoder")
def dinov3_vitb16(**overrides) -> SVGEncoder:
    return SVGEncoder(_svg_config("dinov3_vitb16", "vit_base", 768, residual=False, **overrides))


@register_model("encoder")
def dinov3_vitl16(**overrides) -> SVGEncoder:
    return SVGEncoder(_svg_config("dinov3_vitl16", "vit_large", 1024, residual=False, **overrides))


TINY_DINO = dict(embed_dim=64, depth=2, num_heads=2)
TINY_RESIDUAL = dict(image_size=64, patch_size=16, depth=1, dim=32, heads=2, mlp_dim=64, out_dim=8)
TINY_DECODER = dict(z_channels=72, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                    resolution=64, in_channels=3, out_ch=3, dropout=0.0)


@register_model("encoder")
def test_tiny(**overrides) -> SVGEncoder:
    """Tiny SVG encoder for tests: 64-d DINOv3-style ViT (2 blocks) + 8 residual channels, 64-px residual grid."""
    torch.manual_seed(overrides.pop("seed", 0))
    cfg = _svg_config("test_tiny", "vit_small_plus", 64, dino_overrides=TINY_DINO,
                      residual=dict(TINY_RESIDUAL), decoder=dict(TINY_DECODER))
    cfg["residual"], cfg["decoder"] = dict(TINY_RESIDUAL), dict(TINY_DECODER)
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return SVGEncoder(cfg)


@register_model("encoder")
def test_tiny_t2i_r(**overrides) -> SVGEncoder:
    """Tiny SVG-T2I R for tests: tiny DINOv3-style ViT (64) + 1-layer RoPE residual ViT (8 ch) + tiny decoder."""
    torch.manual_seed(overrides.pop("seed", 0))
    return SVGEncoder(_t2i_config("test_tiny_t2i_r", True, None, dino={"overrides": dict(TINY_DINO)},
                                  residual=dict(image_size=64, depth=1, dim=32, heads=2, mlp_dim=64),
                                  decoder=dict(TINY_DECODER), **overrides))


@register_model("encoder")
def test_tiny_t2i_p(**overrides) -> SVGEncoder:
    """Tiny SVG-T2I P for tests: tiny DINOv3-style ViT (64 ch) + tiny decoder, no residual."""
    torch.manual_seed(overrides.pop("seed", 0))
    return SVGEncoder(_t2i_config("test_tiny_t2i_p", False, None, dino={"overrides": dict(TINY_DINO)},
                                  decoder=dict(TINY_DECODER, z_channels=64), **overrides))


@register_model("encoder")
def test_tiny_dino(**overrides) -> SVGEncoder:
    """Tiny DINOv3-only encoder for tests."""
    torch.manual_seed(overrides.pop("seed", 0))
    return SVGEncoder(_svg_config("test_tiny_dino", "vit_small_plus", 64, dino_overrides=TINY_DINO,
                                  residual=False, **overrides))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
