"""Build :class:`SVGEncoder` objects from weight files; save and export them.

Accepted inputs: Meta DINOv3 ``.pth`` / timm ``.safetensors`` / ``"hf"`` (timm pretrained from the
Hugging Face cache); official SVG Lightning ``.ckpt`` (with or without embedded ``encoder.*``) + YAML;
svgfeat ``.safetensors`` (config in the metadata).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoints as ck
from ..errors import CheckpointError, ConfigError
from .align import MODES
from .dinov3 import timm_to_meta
from .svg import SVGEncoder, _svg_config

# official DINOv3 hub names -> svgfeat variants
HUB_NAMES = {"dinov3_vits16": "vit_small", "dinov3_vits16plus": "vit_small_plus", "dinov3_vitb16": "vit_base",
             "dinov3_vitl16": "vit_large", "dinov3_vith16plus": "vit_huge_plus"}
_KNOWN = {(384, False): "vit_small", (384, True): "vit_small_plus", (768, False): "vit_base",
          (1024, False): "vit_large", (1280, True): "vit_huge_plus"}
DD_KEYS = ("z_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "in_channels",
              "out_ch", "dropout")
_VARIANT_MODEL = {"vit_small_plus": "svg_vits16plus", "vit_base": "svg_vitb16", "vit_large": "svg_vitl16"}


_DEPTH = {"vit_small": 12, "vit_small_plus": 12, "vit_base": 12, "vit_large": 24, "vit_huge_plus": 32}


def infer_dino_variant(sd: dict, source: str = "") -> tuple[str, dict]:
    """(variant, timm overrides) of a Meta- or timm-layout DINOv3 state dict.

    Standard variants are recognised by width/depth/FFN type; anything else (a custom or tiny backbone) is
    rebuilt from the shapes: width from ``cls_token``, depth from ``blocks.*``, heads from the RoPE
    ``periods`` (head_dim = 4 * len(periods)), registers from the storage tokens.
    """
    if "cls_token" not in sd:
        raise CheckpointError(f"{source or 'file'} is not a DINOv3 state dict (no 'cls_token' key); "
                              f"found keys like {ck._fmt_keys(list(sd)[:5], 5)}")
    dim = sd["cls_token"].shape[-1]
    swiglu = "blocks.0.mlp.w1.weight" in sd or "blocks.0.mlp.fc1_g.weight" in sd
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    known = _KNOWN.get((dim, swiglu))
    if known is not None and _DEPTH[known] == depth:
        return known, {}
    base = "vit_small_plus" if swiglu else "vit_small"
    periods = sd.get("rope_embed.periods")
    if periods is None:
        raise CheckpointError(f"{source}: non-standard DINOv3 (width {dim}, depth {depth}) without "
                              "'rope_embed.periods' to infer the head count; use an svgfeat checkpoint or model=")
    heads = dim // (4 * periods.numel())
    regs = sd.get("storage_tokens", sd.get("reg_token"))
    over = {"embed_dim": dim, "depth": depth, "num_heads": heads}
    if regs is not None and regs.shape[1] != 4:
        over["num_reg_tokens"] = regs.shape[1]
    return base, over


def read_dinov3(path) -> tuple[dict, dict]:
    """Return (state dict in Meta or timm layout, provenance) for a DINOv3 weight source."""
    from ..hub import is_hub_spec, resolve

    hub_prov = None
    if is_hub_spec(path):  # "hf" = timm/vit_small_plus_patch16_dinov3_qkvb.lvd1689m through the HF cache
        path, hub_prov = resolve(path, "svg_vits16plus", "dinov3")
    sd = ck.load_file(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict) and "cls_token" not in sd:
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{Path(path).name}: expected a state dict, got {type(sd).__name__}")
    return sd, {"path": str(Path(path).resolve()), "sha256": ck.sha256_file(path), **(hub_prov or {})}


def _load_dino(enc: SVGEncoder, sd: dict, source: str) -> None:
    bb = enc.backbone
    ck.load_strict(bb.model, bb.load_meta_or_timm_state(sd), "DINOv3", source)


def build_encoder(dinov3=None, svg=None, svg_config=None, alignment="batch", device="cpu", model=None,
                  fixed_stats=None, dtype=torch.float32) -> SVGEncoder:
    if alignment not in MODES:
        raise ConfigError(f"alignment={alignment!r}: expected one of {MODES}")
    prov = {}
    dino_sd = None
    if dinov3 is not None:
        dino_sd, prov["dinov3"] = read_dinov3(dinov3)

    own_sd = parts = None
    yaml_cfg = ck.svg_config_from_yaml(ck.load_yaml(svg_config)) if svg_config else {}
    if svg is not None:
        p = Path(svg)
        prov["svg"] = {"path": str(p.resolve()), "sha256": None}
        if p.suffix == ".safetensors":
            own_cfg = ck.read_safetensors_config(p)
            if own_cfg is None or "dino" not in own_cfg:
                raise CheckpointError(f"{p.name}: safetensors file without an svgfeat encoder config; "
                                      "expected a file written by svgfeat (save_encoder / train-ae)")
            own_sd = ck.load_file(p)
        else:
            parts = ck.split_svg_state(ck.load_file(p), p.name)
        prov["svg"]["sha256"] = ck.sha256_file(p)
        if parts is not None and parts["encoder"] and dino_sd is None:
            dino_sd = parts["encoder"]

    # ---- configuration
    if own_sd is not None:
        config = own_cfg
    elif model is not None:
        config = None  # built from the registry below
    else:
        if dino_sd is not None:
            variant, dino_over = infer_dino_variant(dino_sd, str(dinov3 or svg))
        else:
            variant, dino_over = HUB_NAMES.get(yaml_cfg.get("dino_model_name", ""), "vit_small_plus"), {}
        if parts is None:
            config = _svg_config(f"dinov3_{variant}", variant, 0, dino_overrides=dino_over, residual=False)
        else:
            evc = yaml_cfg.get("extra_vit_config", {})
            res = ck.infer_residual_config(parts["extra_vit"])
            res["heads"] = int(evc.get("num_heads", 8))
            dd = yaml_cfg.get("ddconfig") or ck.infer_ddconfig(parts["decoder"])
            mask_ratio = float(evc.get("mask_ratio", 0.1)) if parts["mask_token"] is not None else -1
            if parts["mask_token"] is not None and mask_ratio <= 0:
                mask_ratio = 0.1
            name = _VARIANT_MODEL.get(variant, f"svg_{variant}") if not dino_over else "svg_custom"
            config = _svg_config(name, variant, 0, dino_overrides=dino_over, residual=True, decoder=True,
                                 mask_ratio=mask_ratio)
            config["residual"] = {**config["residual"], **res}
            config["decoder"] = {k: dd[k] for k in DD_KEYS if k in dd}
    if model is not None and own_sd is None:
        from .registry import create_model

        enc = create_model(model)  # registered (seeded) init; weights below override it
        if enc.align is not None:
            enc.set_alignment(alignment)
    else:
        enc = SVGEncoder(dict(config, alignment=alignment))

    # ---- weights
    if own_sd is not None:
        bb = {k[len("backbone.model."):]: v for k, v in own_sd.items() if k.startswith("backbone.model.")}
        if bb:
            dino_sd = bb
        rest = {k: v for k, v in own_sd.items() if not k.startswith("backbone.")}
        full = enc.state_dict()
        ck.check_state({k: v for k, v in full.items() if not k.startswith("backbone.")}, rest, "SVG", Path(svg).name)
        enc.load_state_dict({**full, **{k: v.to(full[k].dtype) for k, v in rest.items()}}, strict=True)
        if "fixed_stats" in own_cfg and enc.align is not None:
            enc.align.set_fixed_stats(own_cfg["fixed_stats"])
    elif parts is not None:
        ck.load_strict(enc.residual, parts["extra_vit"], "residual encoder (extra_vit.*)", Path(svg).name)
        ck.load_strict(enc.decoder, parts["decoder"], "decoder (decoder.*)", Path(svg).name)
        if parts["mask_token"] is not None:
            enc.mask_token.data.copy_(parts["mask_token"].float())
    if dino_sd is not None:
        _load_dino(enc, dino_sd, str(dinov3 or svg))
    elif model is None or not model.startswith(("test_", "random_")):  # random_*: seeded demo models
        raise CheckpointError("DINOv3 weights are needed: pass dinov3=PATH (Meta's "
                              "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth or a timm .safetensors), "
                              "dinov3='hf' to use the Hugging Face cache, or an SVG checkpoint that embeds encoder.*")
    if fixed_stats is not None:
        if enc.align is None:
            raise ConfigError("fixed_stats given but the encoder has no residual branch")
        enc.align.set_fixed_stats(fixed_stats)
    if alignment == "fixed" and enc.align is not None and not enc.align.has_fixed_stats:
        pass  # statistics may be set later (extract computes them in a first pass)
    enc.provenance = {"model": enc.config.get("name", "custom"), **prov}
    return enc.to(device=device, dtype=dtype).eval()



# ----------------------------------------------------------------------------- save / export
def save_encoder(enc: SVGEncoder, path, include_backbone: bool = False) -> Path:
    """svgfeat format: safetensors (residual, decoder, mask token, alignment stats) + JSON config."""
    sd = {k: v for k, v in enc.state_dict().items() if include_backbone or not k.startswith("backbone.")}
    return ck.save_safetensors(path, sd, enc.export_config())


def official_state_dict(enc: SVGEncoder, include_encoder: bool = True) -> dict:
    """The encoder's weights in the official SVG Lightning key layout (``encoder.*`` in Meta layout)."""
    if enc.residual is None or enc.decoder is None:
        raise ConfigError("only a full SVG autoencoder (residual + decoder) can be exported to the official layout")
    sd = {}
    if hasattr(enc, "mask_token"):
        sd["mask_token"] = enc.mask_token.detach()
    if include_encoder:
        heads = enc.backbone.model.blocks[0].attn.num_heads
        sd.update({f"encoder.{k}": v for k, v in timm_to_meta(enc.backbone.model.state_dict(), heads).items()})
    sd.update({f"extra_vit.{k}": v for k, v in enc.residual.state_dict().items()})
    n = enc.residual_channels + 32  # the official (unused) LayerNorm(output_dim + embed_dim=32)
    dev = enc.decoder.conv_out.weight.device
    sd["norm_vit.weight"], sd["norm_vit.bias"] = torch.ones(n, device=dev), torch.zeros(n, device=dev)
    sd.update({f"decoder.{k}": v for k, v in enc.decoder.state_dict().items()})
    return {k: v.detach() if v.is_meta else v.detach().cpu().contiguous() for k, v in sd.items()}


def export_official(enc: SVGEncoder, path, include_encoder: bool = True) -> tuple[Path, Path]:
    """Write an official-layout Lightning ``.ckpt`` and its YAML next to it; returns both paths."""
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.4.0",
            "state_dict": official_state_dict(enc, include_encoder)}
    torch.save(ckpt, p)
    variant = enc.config["dino"]["variant"]
    hub = {v: k for k, v in HUB_NAMES.items()}.get(variant, variant)
    cfg = {"model": {"base_learning_rate": 1e-4, "target": "ldm.models.dino_decoder.DinoDecoder", "params": {
        "embed_dim": 32,
        "ddconfig": dict(enc.decoder.config, double_z=True),
        "dinoconfig": {"model_name": hub},
        "extra_vit_config": {"output_dim": enc.residual_channels, "mask_ratio": enc.mask_ratio, "use_outnorm": True,
                             "num_heads": enc.residual.config["heads"]},
    }}}
    yp = p.with_suffix(".yaml")
    yp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p, yp
