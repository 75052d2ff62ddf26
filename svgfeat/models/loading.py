"""Build :class:`SVGEncoder` objects from local weight files; save and export them.

The encoder half of the builder: :mod:`svgfeat.models.build` resolves Hub specs to local files and calls
:func:`build_encoder`; nothing here touches the Hub.

Accepted inputs: Meta DINOv3 ``.pth`` / timm ``.safetensors`` / ``"hf"`` (timm pretrained from the
Hugging Face cache); official SVG Lightning ``.ckpt`` (with or without embedded ``encoder.*``) + YAML;
svgfeat ``.safetensors`` (config in the metadata).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from .. import checkpoints as ck
from ..errors import CheckpointError, ConfigError
from .align import MODES
from .decoder import official_ddconfig
from .dinov3 import timm_to_meta
from .registry import factory
from .residual_rope import infer_rope_config
from .svg import T2I_STAGES, SVGEncoder, _svg_config, _t2i_config

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


def read_dinov3(path, hub_prov: dict | None = None) -> tuple[dict, dict]:
    """Return (state dict in Meta or timm layout, provenance) for a local DINOv3 weight file (Hub specs are
    resolved by :func:`svgfeat.models.build.read_dinov3`; ``hub_prov`` is their provenance)."""
    sd = ck.load_file(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict) and "cls_token" not in sd:
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{Path(path).name}: expected a state dict, got {type(sd).__name__}")
    return sd, {"path": str(Path(path).resolve()), "sha256": ck.sha256_file(path), **(hub_prov or {})}


def _load_dino(enc: SVGEncoder, sd: dict, source: str) -> None:
    bb = enc.backbone
    ck.load_strict(bb.model, bb.load_meta_or_timm_state(sd), "DINOv3", source)


def _stage_from_names(*paths) -> int | None:
    """SVG-T2I stage from a released file name (``...-stage2.ckpt``, ``..._stage2_512.yaml``), else None."""
    for p in paths:
        m = re.search(r"stage[_-]?([123])(?![0-9])", Path(str(p)).name) if p else None
        if m:
            return int(m.group(1))
    return None


def resolve_family(parts: dict, yaml_cfg: dict, source: str, yaml_source: str = "") -> str:
    """The autoencoder family to build: the weights decide; a disagreeing YAML warns or is refused.

    The released ``svg_autoencoder_R_stage*.yaml`` files are copies of the P ones (``extra_vit_config:
    null``, ``z_channels: 384``). With an R checkpoint (``extra_vit.freqs``, 392-channel ``conv_in``) the
    weights are trusted and a warning is issued. A YAML that declares a residual encoder the checkpoint
    lacks is refused: its weights cannot be invented.
    """
    fam_w = ck.svg_family_from_weights(parts, source)
    fam_y = ck.svg_family_from_yaml(yaml_cfg) if yaml_cfg else None
    if fam_w == "t2i-p":
        dec = parts["decoder"]
        if not dec:
            raise CheckpointError(f"{source}: no decoder.* keys; not an SVG / SVG-T2I autoencoder checkpoint")
        if fam_y in ("svg", "t2i-r"):
            raise CheckpointError(f"{yaml_source or 'the YAML'} describes an autoencoder with a residual encoder "
                                  f"({fam_y}) but {source} has no extra_vit.* weights (an SVG-T2I P checkpoint?); "
                                  "pass the matching YAML or none")
    if fam_y is not None and fam_y != fam_w:
        warnings.warn(f"{yaml_source or 'the YAML'} describes a {fam_y} autoencoder but the weights of {source} are "
                      f"{fam_w} (extra_vit.* / decoder.conv_in shapes); building {fam_w} from the weights "
                      "(the released SVG-T2I R configs are copies of the P ones)", UserWarning, stacklevel=3)
    return fam_w


def _autoencoder_config(parts: dict, yaml_cfg: dict, family: str, variant: str, dino_over: dict,
                        stage, svg_path, yaml_path) -> dict:
    """SVGEncoder config of an official SVG / SVG-T2I checkpoint (+ YAML) of the given family."""
    evc = yaml_cfg.get("extra_vit_config") or {}
    dec_sd = parts["decoder"]
    if yaml_cfg.get("ddconfig"):
        dd = official_ddconfig(yaml_cfg["ddconfig"])  # official attention placement: lowest level only
        if "conv_in.weight" in dec_sd:  # the weights decide the latent width (released R yaml says 384)
            dd["z_channels"] = int(dec_sd["conv_in.weight"].shape[1])
        n = len(dd["ch_mult"])  # ... and where attention blocks are (svgfeat-trained decoders may have none)
        levels = sorted({int(k.split(".")[1]) for k in dec_sd if k.startswith("up.") and ".attn." in k})
        dd["attn_resolutions"] = [int(dd["resolution"]) // 2 ** (n - 1) * 2 ** (n - 1 - i) for i in levels]
    else:
        dd = ck.infer_ddconfig(dec_sd)
    if family == "svg":
        res = ck.infer_residual_config(parts["extra_vit"])
        res["heads"] = int(evc.get("num_heads", 8))
        mask_ratio = float(evc.get("mask_ratio", 0.1)) if parts["mask_token"] is not None else -1
        if parts["mask_token"] is not None and mask_ratio <= 0:
            mask_ratio = 0.1
        name = _VARIANT_MODEL.get(variant, f"svg_{variant}") if not dino_over else "svg_custom"
        config = _svg_config(name, variant, 0, dino_overrides=dino_over, residual=True, decoder=True,
                             mask_ratio=mask_ratio)
        config["residual"] = {**config["residual"], **res}
        config["decoder"] = dd
        return config
    if stage is None:
        stage = _stage_from_names(svg_path, yaml_path)
    if stage is not None and int(stage) not in T2I_STAGES:
        raise ConfigError(f"stage={stage!r}: SVG-T2I stages are {sorted(T2I_STAGES)} (256/512/1024 px)")
    residual = family == "t2i-r"
    std = variant == "vit_small_plus" and not dino_over
    name = f"svg_t2i_{family[-1]}_vits16plus" if std else f"svg_t2i_{family[-1]}_custom"
    config = _t2i_config(name, residual, None if stage is None else int(stage),
                         dino={"variant": variant, "overrides": dict(dino_over)})
    if residual:
        try:
            config["residual"] = infer_rope_config(parts["extra_vit"], heads=int(evc.get("num_heads", 6)))
        except KeyError as e:
            raise CheckpointError(f"SVG-T2I residual encoder weights lack {e}") from None
        dim, heads = config["residual"]["dim"], config["residual"]["heads"]
        if dim % heads or (dim // heads) % 4:  # the head count is not in the weights (released: 6 heads of 64)
            raise CheckpointError(f"{Path(str(svg_path)).name}: a {dim}-wide RoPE residual ViT cannot have {heads} "
                                  "heads; pass the YAML with extra_vit_config.num_heads")
    config["decoder"] = dd
    return config


def build_encoder(dinov3=None, svg=None, svg_config=None, alignment="batch", device="cpu", model=None,
                  fixed_stats=None, dtype=torch.float32, stage=None) -> SVGEncoder:
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
            family = resolve_family(parts, yaml_cfg, Path(svg).name, Path(svg_config).name if svg_config else "")
            config = _autoencoder_config(parts, yaml_cfg, family, variant, dino_over, stage, svg, svg_config)
    if model is not None and own_sd is None:
        enc = factory(model)()  # registered (seeded) init; weights below override it
        if enc.align is not None:
            enc.set_alignment(alignment)
    else:
        if parts is not None and config.get("family") == "t2i-p" and dino_sd is not None:
            width = dino_sd["cls_token"].shape[-1] if "cls_token" in dino_sd else None
            z = config["decoder"].get("z_channels")
            if width is not None and z != width:
                raise CheckpointError(f"{Path(svg).name}: the decoder takes {z} input channels but there is no "
                                      f"residual encoder (extra_vit.*) and DINOv3 gives {width} DINO channels; "
                                      "an SVG / SVG-T2I R checkpoint without its residual weights?")
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
        ev = parts["extra_vit"]
        if enc.residual is None and ev:
            raise CheckpointError(f"{Path(svg).name} has a residual encoder (extra_vit.*) but model {model!r} has none")
        if enc.residual is not None:
            if getattr(enc.residual, "arch", "vit") == "rope_mixed":  # the unused classifier is not built
                ev = {k: v for k, v in ev.items() if not k.startswith("head.")}
            ck.load_strict(enc.residual, ev, "residual encoder (extra_vit.*)", Path(svg).name)
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
    if stage is not None and enc.family in ("t2i-r", "t2i-p"):
        if int(stage) not in T2I_STAGES:
            raise ConfigError(f"stage={stage!r}: SVG-T2I stages are {sorted(T2I_STAGES)} (256/512/1024 px)")
        enc.config["stage"] = int(stage)
    enc.provenance = {"model": enc.config.get("name", "custom"), **prov}
    return enc.to(device=device, dtype=dtype).eval()



# ----------------------------------------------------------------------------- save / export
def save_encoder(enc: SVGEncoder, path, include_backbone: bool = False) -> Path:
    """svgfeat format: safetensors (residual, decoder, mask token, alignment stats) + JSON config."""
    sd = {k: v for k, v in enc.state_dict().items() if include_backbone or not k.startswith("backbone.")}
    return ck.save_safetensors(path, sd, enc.export_config())


def official_state_dict(enc: SVGEncoder, include_encoder: bool = True) -> dict:
    """The encoder's weights in the official SVG Lightning key layout (``encoder.*`` in Meta layout)."""
    if enc.decoder is None or (enc.residual is None and enc.family != "t2i-p"):
        raise ConfigError("only a full SVG / SVG-T2I autoencoder (residual or SVG-T2I P, + decoder) can be exported "
                          "to the official layout")
    sd = {}
    if hasattr(enc, "mask_token"):
        sd["mask_token"] = enc.mask_token.detach()
    if include_encoder:
        heads = enc.backbone.model.blocks[0].attn.num_heads
        sd.update({f"encoder.{k}": v for k, v in timm_to_meta(enc.backbone.model.state_dict(), heads).items()})
    if enc.residual is not None:  # SVG-T2I P has no residual branch and no norm_vit
        sd.update({f"extra_vit.{k}": v for k, v in enc.residual.state_dict().items()})
        n = enc.residual_channels + 32  # the official (unused) LayerNorm(output_dim + embed_dim=32)
        dev = enc.decoder.conv_out.weight.device
        sd["norm_vit.weight"], sd["norm_vit.bias"] = torch.ones(n, device=dev), torch.zeros(n, device=dev)
    sd.update({f"decoder.{k}": v for k, v in enc.decoder.state_dict().items()})
    return {k: v.detach() if v.is_meta else v.detach().cpu().contiguous() for k, v in sd.items()}


def export_official(enc: SVGEncoder, path, include_encoder: bool = True) -> tuple[Path, Path]:
    """Write an official-layout Lightning ``.ckpt`` and its YAML next to it; returns both paths."""
    import yaml

    from ..atomic import write_bytes_atomic

    p = Path(path)
    ckpt = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.4.0",
            "state_dict": official_state_dict(enc, include_encoder)}
    ck.save_torch(p, ckpt)
    variant = enc.config["dino"]["variant"]
    hub = {v: k for k, v in HUB_NAMES.items()}.get(variant, variant)
    evc = None
    if enc.residual is not None:
        evc = {"output_dim": enc.residual_channels, "mask_ratio": max(enc.mask_ratio, 0.0) if enc.family == "t2i-r"
               else enc.mask_ratio, "use_outnorm": True, "num_heads": enc.residual.config["heads"]}
        if enc.family == "t2i-r":
            evc["vit_type"] = "vit-rope-s"
    target = ("ldm.models.dinov3_decoder_native_resolution.DinoDecoder" if enc.family in ("t2i-r", "t2i-p")
              else "ldm.models.dino_decoder.DinoDecoder")
    cfg = {"model": {"base_learning_rate": 1e-4, "target": target, "params": {
        "embed_dim": 32,
        "ddconfig": dict(enc.decoder.config, double_z=True),
        "dinoconfig": {"model_name": hub},
        "extra_vit_config": evc,
    }}}
    yp = p.with_suffix(".yaml")
    write_bytes_atomic(yp, yaml.safe_dump(cfg, sort_keys=False).encode())
    return p, yp
