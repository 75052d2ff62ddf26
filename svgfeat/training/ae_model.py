"""Build a trainable SVG autoencoder for any DINOv3 backbone / image size, and its training forward.

Sizing (:func:`autoencoder_config`): the residual ViT keeps the official shape (6 layers, width 384,
8 heads, MLP 1536, 8 output channels) with ``image_size`` = the training size and ``patch_size`` = the
backbone's, so its learned position-embedding grid matches the training grid; the decoder is the
official LDM decoder with ``z_channels`` = DINO width + 8, ``resolution`` = size, 5 levels (x16), and
its attention at the lowest level (``attn_resolutions = [size // 16]``, i.e. [16] at 256 px as released).

Training forward (:func:`training_latent`) = ``SVGEncoder.forward(x, mask=True)`` with two hooks that
data parallelism needs: the per-sample mask decisions come from the caller (drawn for the global batch
from a per-step generator and sliced per rank), and the four alignment statistics can be computed over
the global batch (``batch_stats="global"``: per-channel sums all-reduced over ranks) instead of each
rank's slice (``"local"``, what the official DDP run did: float32 two-pass statistics as in
:mod:`svgfeat.models.align`). In one process both give the official statistics (up to float round-off).
"""

from __future__ import annotations

import copy

import torch

from .. import distributed as D
from ..errors import ConfigError
from ..models.align import EPS, ChannelMoments, scalar_stats
from ..models.svg import SVGEncoder, _svg_config

BATCH_STATS = ("global", "local")
DINO_WIDTH = {"vit_small": 384, "vit_small_plus": 384, "vit_base": 768, "vit_large": 1024, "vit_huge_plus": 1280}
VARIANT_NAME = {"vit_small_plus": "svg_vits16plus", "vit_small": "svg_vits16", "vit_base": "svg_vitb16",
                "vit_large": "svg_vitl16", "vit_huge_plus": "svg_vith16plus"}


def autoencoder_config(backbone: str | None = None, size: int = 256, model: str | None = None,
                       mask_ratio: float | None = None, residual_dropout: float | None = None,
                       dino_overrides: dict | None = None) -> dict:
    """SVGEncoder config for training: a registered ``model`` resized to ``size``, or one sized from ``backbone``
    (a DINOv3 variant name; ``dino_overrides`` = timm kwargs of a non-standard backbone, as returned by
    :func:`svgfeat.models.loading.infer_dino_variant`)."""
    if size <= 0 or size % 16:
        raise ConfigError(f"size must be a positive multiple of 16, got {size}")
    if model is not None:
        from ..models.build import create_model, model_kind

        if model_kind(model) != "encoder":
            raise ConfigError(f"--model {model!r} is not an encoder")
        cfg = copy.deepcopy(create_model(model).config)
        if not cfg.get("residual") or not cfg.get("decoder"):
            raise ConfigError(f"model {model!r} has no residual encoder / decoder to train; use an svg_* or test_tiny")
        if backbone is not None and backbone != cfg["dino"]["variant"]:
            raise ConfigError(f"--backbone {backbone} contradicts --model {model} (DINOv3 {cfg['dino']['variant']})")
    else:
        backbone = backbone or "vit_small_plus"
        if not isinstance(backbone, str) or backbone not in DINO_WIDTH:
            raise ConfigError(f"unknown DINOv3 backbone {backbone!r}; expected one of {sorted(DINO_WIDTH)}")
        dino_overrides = dict(dino_overrides or {})
        dim = dino_overrides.get("embed_dim") or DINO_WIDTH[backbone]
        name = VARIANT_NAME.get(backbone, f"svg_{backbone}") if not dino_overrides else "svg_custom"
        cfg = _svg_config(name, backbone, dim, dino_overrides=dino_overrides)
    patch = 16  # every DINOv3 ViT uses 16 px patches
    cfg["residual"]["image_size"] = int(size)
    cfg["residual"]["patch_size"] = patch
    dec = cfg["decoder"]
    levels = len(dec["ch_mult"])
    if 2 ** (levels - 1) != patch:
        raise ConfigError(f"decoder upsamples x{2 ** (levels - 1)} but the patch size is {patch}")
    old_low = dec["resolution"] // patch
    dec["resolution"] = int(size)
    dec["attn_resolutions"] = [size // patch] if old_low in dec.get("attn_resolutions", []) else []
    dec["z_channels"] = (cfg["dino"].get("overrides", {}).get("embed_dim") or DINO_WIDTH[cfg["dino"]["variant"]]) \
        + cfg["residual"]["out_dim"]
    if mask_ratio is not None:
        cfg["mask_ratio"] = float(mask_ratio)
    if residual_dropout is not None:
        cfg["residual"]["dropout"] = cfg["residual"]["attn_dropout"] = float(residual_dropout)
    cfg["alignment"] = "batch"
    cfg["train_size"] = int(size)
    return cfg


def read_backbone_weights(dinov3) -> tuple[dict, dict, str, dict]:
    """(state dict, provenance, variant, timm overrides) of a DINOv3 weight source (path, 'hf' or hf:// spec).

    ``variant``/``overrides`` are what :func:`svgfeat.models.loading.infer_dino_variant` reads from the shapes:
    a standard DINOv3 gives (e.g.) ``("vit_small_plus", {})``."""
    from ..models.build import read_dinov3
    from ..models.loading import infer_dino_variant

    sd, prov = read_dinov3(dinov3)
    variant, overrides = infer_dino_variant(sd, str(dinov3))
    return sd, prov, variant, overrides


def build_autoencoder(config: dict, dinov3=None, device="cpu", seed: int = 23) -> tuple[SVGEncoder, dict]:
    """SVGEncoder with DINOv3 weights from ``dinov3`` (a path, 'hf', or the tuple of
    :func:`read_backbone_weights`; random when None: test models only); residual, decoder and mask token
    initialised from ``seed``. Returns (encoder, provenance)."""
    from .. import checkpoints as ck
    from ..errors import CheckpointError

    if dinov3 is None and not str(config.get("name", "")).startswith("test_"):
        raise CheckpointError("DINOv3 weights are needed to train an SVG autoencoder: pass --dinov3 PATH "
                              "(Meta .pth or timm .safetensors) or 'hf'; only test_* models train on a random DINO")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = SVGEncoder(config)
    prov = {"model": config.get("name", "custom")}
    if dinov3 is not None:
        sd, prov["dinov3"], variant, over = dinov3 if isinstance(dinov3, tuple) else read_backbone_weights(dinov3)
        want = (config["dino"]["variant"], dict(config["dino"].get("overrides") or {}))
        if (variant, over) != want:
            got = variant + (f" {over}" if over else "")
            built = want[0] + (f" {want[1]}" if want[1] else "")
            hint = f"pass --backbone {variant}" if not over else "leave out --backbone/--model to size it from the weights"
            raise ConfigError(f"the DINOv3 weights are a {got}, but the model is built for {built}; {hint}")
        bb = enc.backbone
        ck.load_strict(bb.model, bb.load_meta_or_timm_state(sd), "DINOv3", str(prov["dinov3"].get("path")))
    enc.provenance = prov
    return enc.to(device), prov


def trainable_parameters(enc: SVGEncoder) -> list[torch.nn.Parameter]:
    """AE optimizer parameters: decoder + residual encoder + mask token (the backbone is frozen)."""
    params = list(enc.decoder.parameters()) + list(enc.residual.parameters())
    if hasattr(enc, "mask_token"):
        params.append(enc.mask_token)
    return params


def global_scalar_stats(x: torch.Tensor, info: D.DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment scalars of x [b, C, h, w] over the batch gathered from all ranks (float64 sums)."""
    m = ChannelMoments()
    m.update(x)
    mean, std = m.reduce(lambda t: D.all_reduce_sum(t, info)).mean_std()
    return mean.mean().float(), std.mean().float()


def align_residual(dino: torch.Tensor, r: torch.Tensor, info: D.DistInfo, batch_stats: str = "global"):
    """Official batch alignment of r [b, 8, h, w] to dino [b, C, h, w]; statistics detached."""
    if batch_stats == "global":  # float64 per-channel sums (all-reduced under torchrun)
        mu_d, s_d = global_scalar_stats(dino, info)
        mu_r, s_r = global_scalar_stats(r, info)
    else:
        mu_d, s_d = scalar_stats(dino)
        mu_r, s_r = scalar_stats(r)
    return ((r.float() - mu_r) / (s_r + EPS) * s_d + mu_d).to(r.dtype)


def training_latent(enc: SVGEncoder, x: torch.Tensor, keep: torch.Tensor | None, info: D.DistInfo = D.DistInfo(),
                    batch_stats: str = "global") -> torch.Tensor:
    """Latent [b, C+8, h, w] for ImageNet-normalised x [b, 3, H, W], gradients through the residual branch.

    ``keep`` [b] bool: False replaces that sample's whole residual map by ``enc.mask_token`` (before
    alignment); None = no masking. The backbone runs under no_grad (frozen, eval mode).
    """
    if batch_stats not in BATCH_STATS:
        raise ConfigError(f"batch_stats={batch_stats!r}: expected one of {BATCH_STATS}")
    with torch.no_grad():
        dino = enc.backbone(x).patch
    r = enc.residual(x)
    if keep is not None and hasattr(enc, "mask_token"):
        k = keep.to(device=r.device, dtype=r.dtype).view(-1, 1, 1, 1)
        r = r * k + enc.mask_token.to(r.dtype).unsqueeze(-1) * (1 - k)
    return torch.cat([dino, align_residual(dino, r, info, batch_stats)], dim=1)


def mask_keep(generator: torch.Generator, global_batch: int, mask_ratio: float) -> torch.Tensor | None:
    """Per-sample keep flags [global_batch] (u >= mask_ratio, as SVGEncoder.forward draws them)."""
    if mask_ratio <= 0:
        return None
    return torch.rand(global_batch, generator=generator) >= mask_ratio
