"""Native linear segmentation head (BN + 1x1 conv on last-layer patch features): DINOv3's ADE20K protocol.

Training (``fit``) runs in one of two modes:

- **online** -- ``X`` is a segmentation dataset (``open_seg_dataset`` spec or object, or in-memory image /
  mask lists) and an ``encoder`` is given. Each step draws a batch, applies mmseg's ADE20K augmentation
  (rescale 0.5-2.0 of ``base_size``, ``crop_size`` crop, flip), encodes the crops with the frozen encoder
  and trains on logits upsampled bilinearly to the crop (pixel-level cross-entropy, ignore 255).
- **cached** -- ``X`` is a dense-feature cache (``svgfeat.extract(ds, out, groups=("dino", "latent"),
  preset="none" | "resize")``) or a feature array [N, C, h, w]; ``y`` the segmentation dataset the cache
  was made from (or mask arrays). No augmentation; the masks get the cache's image transform (nearest)
  and are kept at ``mask_stride`` (default 4: a 512 image gives 128 x 128 masks), and the logits are
  upsampled bilinearly to that size for the loss. Much faster: the encoder never runs.

Both use AdamW (lr 1e-3, wd 1e-3), ``warmup_iters`` of linear warm-up then cosine (or poly) decay, and run
data parallel under torchrun (:mod:`svgfeat.heads._dense`, which owns the training).
Inference (``predict``) resizes the short side to ``base_size`` (long side capped at 4x), runs a sliding
window (``slide_crop`` / ``slide_stride``, default 512 / 341) or the whole image, averages overlapping
logits, and upsamples them bilinearly to the original image. Metrics: :mod:`svgfeat.heads.seg_metrics`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ._dense import (  # noqa: F401  (re-exported for existing imports)
    GROUPS,
    SCHEDULES,
    DenseHead,
    _is_cache,
    _is_feature_array,
    _upsample,
    cached_dense_set,
    lr_factor,
    slide_inference,
)
from .seg_metrics import SegMetric


class LinearSegHead(DenseHead):
    """BN + linear (1x1 conv) semantic-segmentation head on SVG / DINOv3 patch features.

    Parameters: encoder (an SVGEncoder; needed for online training and for predicting from images);
    group ("latent" = 384 + 8 SVG channels, or "dino"); num_classes (None: from the data); lr,
    weight_decay, max_iters, batch_size, warmup_iters, schedule ("cosine" | "poly"); crop_size, base_size
    (short side before jitter, default crop_size), scale_range, flip, cat_max_ratio (online augmentation);
    slide_crop, slide_stride, inference ("slide" | "whole"); mask_stride (cached mode); ignore_index;
    device; precision ("fp32" | "bf16" | "fp16": autocast of the encoder and head forward passes, loss and
    outputs in float32; see :mod:`svgfeat.heads._dense`); workers (DataLoader processes for online training);
    seed; verbose.

    Learned attributes: ``module_`` (nn.Sequential(BatchNorm2d(C), Conv2d(C, K, 1))), ``classes_``,
    ``num_classes_``, ``in_channels_``, ``history_`` (loss per iteration), ``step_times_`` (seconds per
    iteration, data loading included), ``n_iter_``, ``mode_``
    ("online" | "cached"), ``encoder_spec_`` (what produced the training features).
    """

    _kind = "LinearSegHead"

    def __init__(self, encoder=None, group: str = "latent", num_classes: int | None = None, lr: float = 1e-3,
                 weight_decay: float = 1e-3, max_iters: int = 40000, batch_size: int = 16,
                 warmup_iters: int = 1500, schedule: str = "cosine", crop_size: int = 512,
                 base_size: int | None = None, scale_range=(0.5, 2.0), flip: bool = True,
                 cat_max_ratio: float = 0.75, slide_crop: int = 512, slide_stride: int = 341,
                 inference: str = "slide", mask_stride: int = 4, ignore_index: int = 255, device="cpu",
                 precision: str = "fp32", workers: int = 0, seed: int = 0, verbose: bool = False):
        self._store(locals())

    _positive, _stride_param = ("crop_size", "mask_stride"), "mask_stride"

    def _check_params(self):
        super()._check_params()
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range={self.scale_range}: expected 0 < low <= high")

    def _base(self) -> int:
        return int(self.base_size or self.crop_size)

    # ------------------------------------------------------------------ data
    _data_module, _dataset_class, _opener = "svgfeat.data.segmentation", "SegDataset", "open_seg_dataset"
    _data_noun = ("segmentation dataset", "masks")

    @property
    def _arrays_dataset(self):
        return self._data("ArraySegDataset")

    def _arrays(self, images, masks):
        return self._arrays_dataset(images, masks, num_classes=self.num_classes)

    def _augment(self):
        from ..data.segmentation import SegTrainAugment

        return SegTrainAugment(self.crop_size, self._base(), self.scale_range, self.flip, self.cat_max_ratio,
                               self.ignore_index)

    def _cached_set(self, X, y, stride: int, device):
        """-> (features [N, C, h, w], masks uint8 tensor [N, hm, wm], encoder spec, classes)."""
        if _is_cache(X):
            feats, masks, classes, spec = cached_training_set(X, y, self.group, stride, device)
            return feats, masks, spec, classes
        feats, masks = self._array_targets(X, y, "masks")
        return feats, masks, None, []

    def _setup_outputs(self, ds, targets, classes) -> int:
        if ds is not None:
            k, classes = int(self.num_classes or ds.num_classes), ds.classes
        else:
            k = int(self.num_classes or len(classes) or int(targets[targets != self.ignore_index].max()) + 1)
        self.classes_ = list(classes) if len(classes) == k else [f"class {i}" for i in range(k)]
        self.num_classes_ = k
        if targets is not None:
            self._check_batch(targets)
        return k

    def _check_batch(self, masks: torch.Tensor) -> None:
        """CPU label tensor: every value must be a class index or ignore_index."""
        bad = (masks != self.ignore_index) & ((masks < 0) | (masks >= self.num_classes_))
        if bool(bad.any()):
            vals = sorted(set(masks[bad].unique().tolist()))[:5]
            raise DataError(f"mask labels {vals} are outside 0..{self.num_classes_ - 1} and are not ignore_index "
                            f"{self.ignore_index} (wrong num_classes, or ADE20K-style labels without "
                            "reduce_zero_label?)")

    # ------------------------------------------------------------------ loss and decoding
    def _forward(self, feats: torch.Tensor, size) -> torch.Tensor:
        return _upsample(self._head(feats), size)  # float32 logits (the head ran under the autocast)

    def _loss_stats(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[sum of pixel cross-entropies, number of labelled pixels] of this share of the batch."""
        target = target.long()
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        return torch.stack([ce, (target != self.ignore_index).sum().to(ce.dtype)])

    @staticmethod
    def _loss(stats: torch.Tensor) -> torch.Tensor:
        return stats[0] / stats[1]  # NaN when every pixel is ignored: no step

    # ------------------------------------------------------------------ inference
    def logits_from_features(self, feats, size=None) -> torch.Tensor:
        """Features [N, C, h, w] -> logits [N, K, H, W] (H, W = ``size`` or 16h, 16w), float32 on CPU."""
        return self._features_out(feats, size)

    @torch.no_grad()
    def image_logits(self, image, mode: str | None = None) -> torch.Tensor:
        """One image (PIL / path / uint8 array) -> logits [K, H, W] at the original size (float32, CPU)."""
        from PIL import Image

        from ..data.segmentation import rescale_size, to_pil
        from ..data.transforms import normalize

        self._ready_encoder()
        img = to_pil(image)
        W0, H0 = img.size
        size = rescale_size(W0, H0, (4 * self._base(), self._base()))
        x = normalize(np.asarray(img.resize(size, Image.BILINEAR) if size != img.size else img))[None]
        return _upsample(self._infer(x, mode), (H0, W0))[0].cpu()

    def predict_proba(self, X) -> list[np.ndarray]:
        """Class probabilities per image: list of float32 [K, H, W] (original image sizes)."""
        if _is_feature_array(X):
            return list(self.logits_from_features(X).softmax(1).numpy())
        return [self.image_logits(im).softmax(0).numpy() for im in self._images(X)]

    def _predict_arrays(self, feats, size):
        return self.logits_from_features(feats, size).argmax(1).numpy()

    def _predict_image(self, img) -> np.ndarray:
        return self.image_logits(img).argmax(0).numpy()

    def _new_metric(self, ds, reduce_zero_label: bool = False):
        return SegMetric(self.num_classes_, self.ignore_index, reduce_zero_label, self.classes_), \
            {"classes": list(self.classes_)}

    def score(self, X, y=None) -> float:
        """mIoU (fraction in [0, 1]) on ``X`` (see :meth:`evaluate`): mIoU / mAcc / aAcc + per-class IoU / Acc."""
        return self.evaluate(X, y)["mIoU"]

    # ------------------------------------------------------------------ persistence
    def _config_extra(self) -> dict:
        return {"classes": list(self.classes_), "num_classes": self.num_classes_}

    def _load_extra(self, cfg) -> int:
        self.classes_, self.num_classes_ = cfg["classes"], int(cfg["num_classes"])
        return self.num_classes_


def cached_training_set(cache, data, group: str, mask_stride: int, device):
    """Dense features + aligned masks from a cache and the segmentation dataset it was extracted from.

    Returns (features [N, C, h, w] (the cache's shared device tensor, stored dtype), masks uint8 tensor
    [N, S/mask_stride, S/mask_stride] on CPU, classes, cache encoder spec). Rows are matched by path; views
    other than 0 (plain) and 1 (flip) are skipped.
    """
    from ..data.segmentation import open_seg_dataset, transform_mask

    feats, masks, spec, ds = cached_dense_set(
        cache, data, group, mask_stride, device, open_seg_dataset, lambda ds, i: ds.load_mask(i),
        lambda m, spec: transform_mask(m, spec).astype(np.uint8), "segmentation")
    return feats, masks, ds.classes, spec
