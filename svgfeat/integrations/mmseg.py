"""mmsegmentation integration: the ``SVGBackbone`` backbone and a ``BNHead`` decode head.

Importing this module registers both in mmseg's ``MODELS`` registry. From a config::

    custom_imports = dict(imports=["svgfeat.integrations.mmseg"], allow_failed_imports=False)
    model = dict(type="EncoderDecoder", backbone=dict(type="SVGBackbone", dinov3="...pth", svg="...ckpt"), ...)

Ready configs (ADE20K 512x512): ``config_path("linear")`` (BN + 1x1 conv on the last layer, DINOv3's
frozen linear protocol) and ``config_path("upernet")`` (4 layers -> simple feature pyramid -> UPerNet), with
the original SVG autoencoder; ``"linear-t2i-r"``, ``"linear-t2i-p"``, ``"upernet-t2i-r"``, ``"upernet-t2i-p"``:
the same protocols with the SVG-T2I Autoencoder-R / -P of the 512-px stage (native 512-px features).
The linear configs state the dense protocol presets of :mod:`svgfeat.evaluation.protocols` (``ade20k-linear``;
``nyuv2-linear`` for depth, :mod:`svgfeat.integrations.mmseg_depth`): the numbers the native ``svgfeat seg`` /
``svgfeat depth`` commands use (a test holds them equal).

Design choices:
- Outputs are the *normed* intermediate patch maps of the requested blocks (``enc.encode(x, layers=...)``).
- Any SVG family works (``svg``: original SVG; SVG-T2I Autoencoder-R or -P, e.g. at 512 px). The latent of
  SVG-T2I P has no residual channels: ``group="latent"`` then gives the C DINO channels.
- The residual channels exist only for the last block. With ``group="latent"`` and ``residual_at="all"``
  (default) they are appended to *every* output, so all levels have C + r channels (uniform ``in_channels``
  and the detail channels reach the high-resolution pyramid levels, where they matter most);
  ``residual_at="last"`` appends them only to outputs of the last block.
- Inputs whose sides are not multiples of 16 are zero-padded bottom/right (zero = the mean colour after
  ImageNet normalisation) and the stride-16 maps are cropped back to ceil(H/16) x ceil(W/16).
- ``multi_scale=True`` builds a ViTDet/BEiT simple feature pyramid from the stride-16 maps: scale 4 =
  2 x (ConvTranspose 2x2) with norm + GELU between, 2 = ConvTranspose 2x2, 1 = identity, 0.5 = max-pool.
  Its layers are trainable even while the encoder stays frozen.
- ``frozen=True`` (default): encoder parameters have ``requires_grad=False``, it always runs in eval mode
  under ``torch.no_grad`` (no dropout, no statistics updates). ``frozen=False`` fine-tunes DINOv3 and the
  residual encoder (gradients flow through both).
"""

from __future__ import annotations

import math
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingDependencyError

try:
    import mmseg.models  # noqa: F401  (registers mmseg's own modules)
    from mmcv.cnn import build_norm_layer
    from mmengine.hooks import Hook
    from mmengine.model import BaseModule
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    from mmseg.registry import HOOKS, MODELS
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("onedl-mmsegmentation", "mmseg", "svgfeat.integrations.mmseg") from e

GROUPS = ("dino", "latent")
PYRAMID_SCALES = (4, 2, 1, 0.5)
CONFIGS = {"linear": "svg_linear_ade20k_512x512_40k.py", "upernet": "svg_upernet_ade20k_512x512_80k.py",
           # SVG-T2I autoencoders at 512 px (stage 2): R = 392 ch, P = 384 ch (no residual)
           "linear-t2i-r": "svg_t2i_r_linear_ade20k_512x512_40k.py",
           "linear-t2i-p": "svg_t2i_p_linear_ade20k_512x512_40k.py",
           "upernet-t2i-r": "svg_t2i_r_upernet_ade20k_512x512_80k.py",
           "upernet-t2i-p": "svg_t2i_p_upernet_ade20k_512x512_80k.py"}


def config_path(name: str) -> str:
    """Path of a shipped config: ``"linear"`` or ``"upernet"`` (or a file name under configs/mmseg)."""
    fname = CONFIGS.get(name, name)
    p = resources.files("svgfeat") / "configs" / "mmseg" / fname
    if not p.is_file():
        raise ConfigError(f"no shipped mmseg config {name!r}; available: {sorted(CONFIGS)}")
    return str(p)


def resolve_out_indices(spec, depth: int) -> list[int]:
    """Block indices from ``spec``: ints (negatives count from the end) or floats in (0, 1] meaning a
    fraction of the depth (block ceil(f * depth) - 1; (0.25, 0.5, 0.75, 1.0) -> 2, 5, 8, 11 for 12
    blocks, 0, 0, 1, 1 for 2). Duplicates are allowed (one output each)."""
    if isinstance(spec, (int, float)):
        spec = (spec,)
    spec = tuple(spec)
    if not spec:
        raise ConfigError("out_indices is empty; expected at least one block index")
    kinds = {isinstance(v, float) for v in spec}
    if len(kinds) > 1:
        raise ConfigError(f"out_indices {spec}: mix of ints (block indices) and floats (depth fractions)")
    out = []
    for v in spec:
        if isinstance(v, float):
            if not 0 < v <= 1:
                raise ConfigError(f"out_indices fraction {v} is outside (0, 1]")
            out.append(max(0, math.ceil(v * depth) - 1))
        else:
            j = int(v) + depth if int(v) < 0 else int(v)
            if not 0 <= j < depth:
                raise ConfigError(f"out_indices entry {v} is out of range for a {depth}-block encoder "
                                  f"(use 0..{depth - 1}, negatives, or fractions like 0.25)")
            out.append(j)
    return out


def _pyramid_op(scale, channels: int, norm_cfg: dict) -> nn.Module:
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, 2), build_norm_layer(norm_cfg, channels)[1],
                             nn.GELU(), nn.ConvTranspose2d(channels, channels, 2, 2))
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, 2, 2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(2, 2)
    raise ConfigError(f"pyramid scale {scale}: expected one of {PYRAMID_SCALES}")


@MODELS.register_module(force=True)  # force: a reload re-registers the same class
class SVGBackbone(BaseModule):
    """SVG / DINOv3 encoder as an mmseg backbone.

    Input: [B, 3, H, W] float (mmseg's SegDataPreProcessor with ImageNet mean/std, RGB). Output: a tuple
    with one map per ``out_indices`` entry, [B, C_i, ceil(H/16), ceil(W/16)] (C_i = C or C + r), or with
    ``multi_scale`` the pyramid levels at strides 16 / scale.

    Weights: ``dinov3`` / ``svg`` / ``svg_config`` paths (see :func:`svgfeat.load_encoder`) and/or a
    registered ``model`` name (``test_tiny`` builds a random tiny encoder for tests).
    """

    def __init__(self, dinov3=None, svg=None, svg_config=None, model=None, group: str = "latent",
                 out_indices=(-1,), residual_at: str = "all", multi_scale: bool = False,
                 scales=PYRAMID_SCALES, norm_cfg=None, frozen: bool = True, alignment: str = "batch",
                 fixed_stats=None, init_cfg=None):
        super().__init__(init_cfg)
        from ..models.build import load_encoder

        if group not in GROUPS:
            raise ConfigError(f"SVGBackbone group={group!r}: expected one of {GROUPS}")
        if residual_at not in ("all", "last"):
            raise ConfigError(f"residual_at={residual_at!r}: expected 'all' or 'last'")
        self.encoder = load_encoder(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model,
                                    alignment=alignment, fixed_stats=fixed_stats)
        if group == "latent" and self.encoder.residual is None and self.encoder.decoder is None:
            raise ConfigError("group='latent' needs an SVG / SVG-T2I autoencoder (pass svg=... or an SVG model "
                              "name); this encoder is DINOv3-only: use group='dino'")
        self.group, self.residual_at, self.frozen = group, residual_at, bool(frozen)
        self.depth = self.encoder.backbone.depth
        self.out_indices = resolve_out_indices(out_indices, self.depth)
        self.patch_size = self.encoder.patch_size
        C, r = self.encoder.embed_dim, self.encoder.residual_channels
        last = self.depth - 1
        self.out_channels = [C + r if group == "latent" and (residual_at == "all" or i == last) else C
                             for i in self.out_indices]
        self.multi_scale = bool(multi_scale)
        self.scales = tuple(scales)
        if self.multi_scale:
            n = len(self.out_indices)
            if n not in (1, len(self.scales)):
                raise ConfigError(f"multi_scale needs 1 or {len(self.scales)} out_indices (one per scale), got {n}")
            chans = self.out_channels * len(self.scales) if n == 1 else self.out_channels
            norm_cfg = dict(norm_cfg or dict(type="BN", requires_grad=True))
            self.pyramid = nn.ModuleList([_pyramid_op(s, c, norm_cfg) for s, c in zip(self.scales, chans)])
            self.out_channels = list(chans)
        for p in self.encoder.parameters():
            p.requires_grad_(not self.frozen)
        if self.frozen:
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def _features(self, x: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
        """{block: patch map [B, C, h, w]} for the requested blocks, and the aligned residual (or None)."""
        layers = sorted(set(self.out_indices))
        need_res = self.group == "latent" and self.encoder.residual is not None  # SVG-T2I P: latent = DINO
        if self.frozen:
            f = self.encoder.encode(x, layers=layers)
            return {i: f.layers[i][1] for i in layers}, (f.residual if need_res else None)
        enc = self.encoder
        out = enc.backbone(x, layers=layers)
        res = enc.align(out.patch, enc.residual(x)) if need_res else None
        return {i: out.layers[i][1] for i in layers}, res

    def forward(self, x: torch.Tensor) -> tuple:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SVGBackbone expects [B, 3, H, W] images, got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        p = self.patch_size
        ph, pw = (-H) % p, (-W) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        h, w = math.ceil(H / p), math.ceil(W / p)
        maps, res = self._features(x)
        last = self.depth - 1
        outs = []
        for i in self.out_indices:
            m = maps[i]
            if res is not None and (self.residual_at == "all" or i == last):
                m = torch.cat([m, res.to(m.dtype)], dim=1)
            outs.append(m[..., :h, :w])
        if self.multi_scale:
            if len(outs) == 1:
                outs = outs * len(self.scales)
            outs = [op(o) for op, o in zip(self.pyramid, outs)]
        return tuple(outs)


@MODELS.register_module(force=True)  # force: a reload re-registers the same class
class BNHead(BaseDecodeHead):
    """Linear decode head: (resize + concat of the selected inputs) -> BatchNorm -> dropout -> 1x1 conv.

    DINOv2/DINOv3's linear segmentation probe. ``channels`` defaults to the (concatenated) input channels;
    ``norm_cfg`` defaults to BN (use SyncBN for multi-GPU). Input: list of [B, C_i, h, w] maps; output
    logits [B, num_classes, h, w] at the resolution of the first selected input.
    """

    def __init__(self, in_channels, channels=None, **kwargs):
        kwargs.setdefault("input_transform", "resize_concat" if isinstance(in_channels, (list, tuple)) else None)
        kwargs.setdefault("dropout_ratio", 0.0)
        total = sum(in_channels) if isinstance(in_channels, (list, tuple)) else int(in_channels)
        if kwargs["input_transform"] == "multiple_select":
            raise ConfigError("BNHead needs one input: input_transform must be 'resize_concat' or None")
        if channels is not None and int(channels) != total:
            raise ConfigError(f"BNHead channels={channels} must equal the input channels ({total})")
        super().__init__(in_channels, total, **kwargs)
        self.bn = build_norm_layer(self.norm_cfg or dict(type="BN", requires_grad=True), self.channels)[1]

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        return self.cls_seg(self.bn(x))


@HOOKS.register_module(force=True)
class SVGPlainCheckpointHook(Hook):
    """Keep mmengine checkpoints loadable with ``torch.load(weights_only=True)`` (torch >= 2.6's default).

    mmengine stores its message hub (``HistoryBuffer`` objects, numpy scalars) in every checkpoint and
    loads checkpoints with a plain ``torch.load``, so ``load_from`` fails on them under torch >= 2.6. This
    hook drops the message hub and reduces ``meta`` to JSON types before saving: ``load_from`` (and
    svgfeat / plain torch loading) then work; ``resume=True`` is not supported (no optimizer state).
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        import json

        for key in ("message_hub", "optimizer", "param_schedulers"):
            checkpoint.pop(key, None)
        if "meta" in checkpoint:
            checkpoint["meta"] = json.loads(json.dumps(checkpoint["meta"], default=_json_default))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def match_head_channels(cfg) -> list[int]:
    """Set ``in_channels`` of ``cfg.model.decode_head`` / ``auxiliary_head`` to the backbone's output channels.

    Builds the backbone once (loads its weights) to read ``out_channels``; use after overriding the backbone
    (e.g. ``model.backbone.model='test_tiny'`` or ``group='dino'``). ``cfg``: an mmengine Config / dict with
    a ``model`` entry. Returns the backbone's out_channels.
    """
    backbone = MODELS.build(cfg["model"]["backbone"])
    chans = list(backbone.out_channels)
    del backbone
    for key in ("decode_head", "auxiliary_head"):
        heads = cfg["model"].get(key)
        for head in (heads if isinstance(heads, (list, tuple)) else [heads]):
            if not head:
                continue
            idx = head.get("in_index", -1)
            if isinstance(head.get("in_channels"), (list, tuple)):
                ids = idx if isinstance(idx, (list, tuple)) else list(range(len(chans)))
                head["in_channels"] = [chans[i] for i in ids]
            else:
                head["in_channels"] = chans[idx if isinstance(idx, int) else idx[0]]
    return chans


def build_segmentor(cfg):
    """Build ``cfg.model`` (an mmseg segmentor such as EncoderDecoder) in mmseg's registry scope.

    ``cfg``: an mmengine ``Config`` or a dict with a ``model`` entry; the model dict is converted to a
    ``ConfigDict`` (EncoderDecoder needs ``test_cfg`` as one). Returns the module with weights initialised.
    """
    import logging

    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger
    from mmengine.registry import DefaultScope

    model_cfg = ConfigDict(cfg["model"])
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(model_cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter at INFO without a log file
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model
