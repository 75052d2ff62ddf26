"""mmsegmentation depth estimation with SVG features: ``BinsDepthHead`` + ``SVGSigLoss`` for mmseg's
``DepthEstimator`` (onedl-mmsegmentation 1.4.x ships ``DepthEstimator``, ``NYUDataset``,
``LoadDepthAnnotation`` and ``DepthMetric``).

Importing this module registers both in mmseg's ``MODELS`` registry (it imports
:mod:`svgfeat.integrations.mmseg`, which registers ``SVGBackbone``). From a config::

    custom_imports = dict(imports=["svgfeat.integrations.mmseg", "svgfeat.integrations.mmseg_depth"],
                          allow_failed_imports=False)
    model = dict(type="DepthEstimator", backbone=dict(type="SVGBackbone", ...),
                 decode_head=dict(type="BinsDepthHead", in_channels=[392], ...))

The shipped config ``config_path("svg_linear_nyu_416x544_38k.py")`` is DINOv3's NYUv2 linear protocol; the
head and loss reuse the native head's maths (:mod:`svgfeat.heads.depth`), so both paths decode and train
identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingDependencyError
from . import mmseg as _svg_mmseg  # noqa: F401  (registers SVGBackbone, BNHead, SVGPlainCheckpointHook)

try:
    from mmcv.cnn import build_norm_layer
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    from mmseg.registry import MODELS
except ImportError as e:  # pragma: no cover - the import above already raised without the extra
    raise MissingDependencyError("onedl-mmsegmentation", "mmseg", "svgfeat.integrations.mmseg_depth") from e

DEPTH_CONFIG = "svg_linear_nyu_416x544_38k.py"


@MODELS.register_module(force=True)
class SVGSigLoss(nn.Module):
    """SigLoss (AdaBins / DINOv2 depth toolbox): sqrt(Var(g) + 0.15 mean(g)^2), g = ln pred - ln gt over the
    batch's pixels with min_depth < gt < max_depth (:func:`svgfeat.heads.depth.sig_loss`)."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, loss_weight: float = 1.0,
                 loss_name: str = "loss_sig"):
        super().__init__()
        self.min_depth, self.max_depth, self.loss_weight = float(min_depth), float(max_depth), float(loss_weight)
        self._loss_name = loss_name

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
        from ..heads.depth import sig_loss

        loss = sig_loss(pred, target, self.min_depth, self.max_depth)
        return self.loss_weight * torch.nan_to_num(loss, nan=0.0)  # a crop without ground truth adds nothing

    @property
    def loss_name(self) -> str:
        return self._loss_name


@MODELS.register_module(force=True)
class BinsDepthHead(BaseDecodeHead):
    """Linear depth head: (resize + concat of the inputs) -> upsample x``upsample`` -> BN -> 1x1 conv to
    ``n_bins`` -> classification-regression decoding (linear bins over [min_depth, max_depth], relu + 0.1
    normalised weights) -> depth [B, 1, h, w]. ``out_channels`` is 1 (one depth map) for ``DepthEstimator``.
    """

    def __init__(self, in_channels, n_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0,
                 bins: str = "linear", norm: str = "linear", upsample: int = 4, channels=None, **kwargs):
        kwargs.setdefault("input_transform", "resize_concat" if isinstance(in_channels, (list, tuple)) else None)
        kwargs.setdefault("dropout_ratio", 0.0)
        kwargs.setdefault("loss_decode", dict(type="SVGSigLoss", min_depth=min_depth, max_depth=max_depth))
        total = sum(in_channels) if isinstance(in_channels, (list, tuple)) else int(in_channels)
        if channels is not None and int(channels) != total:
            raise ConfigError(f"BinsDepthHead channels={channels} must equal the input channels ({total})")
        if bins not in ("linear", "log") or norm not in ("linear", "softmax"):
            raise ConfigError(f"bins={bins!r} / norm={norm!r}: expected 'linear'|'log' / 'linear'|'softmax'")
        super().__init__(in_channels, total, num_classes=int(n_bins), **kwargs)
        self.bn = build_norm_layer(self.norm_cfg or dict(type="BN", requires_grad=True), self.channels)[1]
        self.out_channels = 1  # DepthEstimator reads this: one depth channel
        self.n_bins, self.min_depth, self.max_depth = int(n_bins), float(min_depth), float(max_depth)
        self.bins_kind, self.norm_kind, self.upsample = bins, norm, int(upsample)

    def forward(self, inputs) -> torch.Tensor:
        from ..heads.depth import bin_centers, decode_bins

        x = self._transform_inputs(inputs)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=self.align_corners)
        logits = self.cls_seg(self.bn(x))
        bins = bin_centers(self.n_bins, self.min_depth, self.max_depth, self.bins_kind, logits.device)
        return decode_bins(logits, bins, self.norm_kind)

    def loss_by_feat(self, depth: torch.Tensor, batch_data_samples) -> dict:
        gt = torch.stack([s.gt_depth_map.data for s in batch_data_samples]).to(depth.dtype)
        depth = F.interpolate(depth, size=gt.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        losses = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        out = {}
        for loss in losses:
            out[loss.loss_name] = out.get(loss.loss_name, 0) + loss(depth, gt)
        return out
