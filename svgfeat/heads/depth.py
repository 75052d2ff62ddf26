"""Native linear depth head (BN + 1x1 conv on last-layer patch features): DINOv3's NYUv2 linear protocol.

Head: ``BatchNorm2d(C) -> Conv2d(C, n_bins, 1)`` on the patch map [B, C, h, w] (C = 384 + 8 SVG latent or
384 DINOv3). Classification-regression decoding (DINOv3 ``FeaturesToDepth``, AdaBins-style, the protocol's
defaults ``bins_strategy='linear'``, ``norm_strategy='linear'``): 256 bin centres spaced linearly in
[min_depth, max_depth] = [0.001, 10] m, weights ``w = (relu(x) + 0.1) / sum(relu(x) + 0.1)`` over bins,
depth = sum_k w_k * bin_k. As in DINOv2/v3's linear head (mmseg-style ``BNHead(upsample=4)``), the patch
features are upsampled bilinearly x``upsample`` before BN + conv, the bins are decoded at that resolution
(stride 4) and the depth map is upsampled bilinearly to the target size.

Loss: SigLoss (AdaBins / DINOv2 depth toolbox): g = ln(pred) - ln(gt) over valid pixels
(min_depth < gt < max_depth) of the batch, ``loss = sqrt(Var(g) + 0.15 * mean(g)^2)`` (population variance).

Training (``fit``), as :class:`~svgfeat.heads.segmentation.LinearSegHead`:
- **online** -- ``X`` a depth dataset, an ``encoder`` given: random brightness 0.75-1.25, random crop
  ``crop_size`` (416 x 544), flip; the frozen encoder encodes each crop.
- **cached** -- ``X`` a dense-feature cache (``svgfeat.extract(ds, out, groups=("dino", "latent"),
  preset="none" | "resize")``) or a feature array [N, C, h, w]; ``y`` the depth dataset (or depth arrays).
  No augmentation; targets are the depth maps under the cache's transform at ``depth_stride``.
Both: AdamW (lr 3e-4, wd 1e-4, betas 0.9 / 0.99), gradient-norm clip 35, ``warmup_iters`` linear warm-up then
cosine decay, data parallel under torchrun (:mod:`svgfeat.heads._dense`, which owns the training) (DINOv3 uses a one-cycle schedule with 12.8k of 38.4k iterations warming up; ours has the same
warm-up length and a cosine tail to 0).

Inference: the whole image (sides padded to a multiple of 16) or a sliding window, optional flip TTA
(mean of the depth of the image and of its mirror), depth returned at the original image size.
Metrics: :mod:`svgfeat.heads.depth_metrics` (Eigen crop for NYUv2).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ._dense import (  # noqa: F401  (re-exported for existing imports)
    GROUPS,
    DenseHead,
    _is_cache,
    _is_feature_array,
    _upsample,
    cached_dense_set,
    hw,
    lr_factor,
    slide_inference,
)
from .depth_metrics import DepthMetric, valid_mask

BINS = ("linear", "log")
NORMS = ("linear", "softmax")
EVAL_CROPS = ("auto", "eigen", "none")
_hw = hw  # the name older code imports


def bin_centers(n_bins: int, min_depth: float, max_depth: float, kind: str = "linear", device="cpu"):
    """[n_bins] depth values: linear or log-uniform spacing over [min_depth, max_depth]."""
    if kind == "linear":
        return torch.linspace(min_depth, max_depth, n_bins, device=device)
    return torch.exp(torch.linspace(np.log(min_depth), np.log(max_depth), n_bins, device=device))


def decode_bins(logits: torch.Tensor, bins: torch.Tensor, norm: str = "linear") -> torch.Tensor:
    """Bin logits [B, K, H, W] -> depth [B, 1, H, W] = sum_k w_k bins_k (w: relu + 0.1 normalised, or softmax)."""
    w = torch.exp(logits - logits.amax(1, keepdim=True)) if norm == "softmax" else torch.relu(logits) + 0.1
    # sum_k w_k b_k / sum_k w_k in one contraction (cheaper than normalising the [B, K, H, W] weights first)
    proj = torch.stack([bins.to(w.dtype), torch.ones_like(bins, dtype=w.dtype)], 1)  # [K, 2]
    num_den = torch.einsum("bkhw,kc->bchw", w, proj)
    return num_den[:, :1] / num_den[:, 1:]


def sig_loss_stats(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 1e-3, max_depth: float = 10.0):
    """[sum g, sum g^2, n, sum of valid gt] (float64) over the valid pixels (min_depth < gt < max_depth),
    g = ln pred - ln gt: what SigLoss needs from a batch, summable over the shares of a batch."""
    pred = pred.reshape(gt.shape)
    valid = (gt > min_depth) & (gt < max_depth)
    g = torch.log(pred[valid]).double() - torch.log(gt[valid]).double()
    n = valid.sum().to(torch.float64)
    return torch.stack([g.sum(), (g * g).sum(), n, gt[valid].double().sum().detach()])


def sig_loss_from_stats(stats: torch.Tensor) -> torch.Tensor:
    """SigLoss from summed :func:`sig_loss_stats`: sqrt(Var(g) + 0.15 mean(g)^2); NaN when n = 0."""
    mean = stats[0] / stats[2]
    var = (stats[1] / stats[2] - mean * mean).clamp_min(0)
    return torch.sqrt(var + 0.15 * mean ** 2).float()


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 1e-3, max_depth: float = 10.0):
    """SigLoss over the valid pixels of a batch: sqrt(Var(g) + 0.15 mean(g)^2), g = ln pred - ln gt.

    ``pred``, ``gt``: [B, H, W] (or [B, 1, H, W]) in metres. NaN when no pixel is valid.
    """
    return sig_loss_from_stats(sig_loss_stats(pred, gt, min_depth, max_depth))


class LinearDepthHead(DenseHead):
    """BN + linear (1x1 conv) depth head with bin classification-regression (see the module doc).

    Parameters: encoder (an SVGEncoder; needed for online training and for predicting from images);
    group ("latent" | "dino"); n_bins, min_depth, max_depth, bins ("linear" | "log"), norm ("linear" |
    "softmax"), upsample; lr, weight_decay, grad_clip, max_iters, batch_size, warmup_iters, schedule
    ("cosine" | "poly"); crop_size (h, w), flip, brightness (online augmentation); inference ("whole" |
    "slide"), slide_crop, slide_stride, tta (flip test-time augmentation); eval_crop ("auto": the dataset's,
    i.e. Eigen for NYUv2; "eigen"; "none"); depth_stride (target resolution in cached mode); device; precision
    ("fp32" | "bf16" | "fp16": autocast of the encoder and head forward passes, bin decoding, loss and depth in
    float32); workers; seed; verbose.

    Learned attributes: ``module_``, ``in_channels_``, ``history_`` (loss per iteration), ``step_times_``,
    ``n_iter_``, ``mode_`` ("online" | "cached"), ``encoder_spec_``, ``train_depth_mean_`` (mean valid
    target depth seen in training: the constant baseline's prediction).
    """

    _kind = "LinearDepthHead"
    _betas = (0.9, 0.99)

    def __init__(self, encoder=None, group: str = "latent", n_bins: int = 256, min_depth: float = 1e-3,
                 max_depth: float = 10.0, bins: str = "linear", norm: str = "linear", upsample: int = 4,
                 lr: float = 3e-4, weight_decay: float = 1e-4, grad_clip: float | None = 35.0,
                 max_iters: int = 38400, batch_size: int = 16, warmup_iters: int = 12800,
                 schedule: str = "cosine", crop_size=(416, 544), flip: bool = True, brightness=(0.75, 1.25),
                 inference: str = "whole", slide_crop=(416, 544), slide_stride=(208, 272), tta: bool = True,
                 eval_crop: str = "auto", depth_stride: int = 4, device="cpu", precision: str = "fp32",
                 workers: int = 0, seed: int = 0, verbose: bool = False):
        self._store(locals())

    _choices = {"bins": BINS, "norm": NORMS, "eval_crop": EVAL_CROPS}
    _positive, _stride_param = ("n_bins", "upsample", "depth_stride"), "depth_stride"

    def _check_params(self):
        super()._check_params()
        if not 0 < float(self.min_depth) < float(self.max_depth):
            raise ConfigError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if min(hw(self.crop_size)) < 1:
            raise ConfigError(f"crop_size must be positive, got {self.crop_size}")

    # ------------------------------------------------------------------ data
    _data_module, _dataset_class, _opener = "svgfeat.data.depth", "DepthDataset", "open_depth_dataset"
    _data_noun = ("depth dataset", "depth maps")

    @property
    def _arrays_dataset(self):
        return ArrayDepthDataset

    def _arrays(self, images, depths):
        return ArrayDepthDataset(images, depths)

    def _augment(self):
        from ..data.depth import DepthTrainAugment

        return DepthTrainAugment(hw(self.crop_size), self.flip, self.brightness)

    def _cached_set(self, X, y, stride: int, device):
        """-> (features [N, C, h, w], depth float32 [N, 16h/stride, 16w/stride] on CPU, encoder spec, None)."""
        if _is_cache(X):
            return (*cached_depth_set(X, y, self.group, stride, device), None)
        feats, depths = self._array_targets(X, y, "depth maps", np.float32)
        _check_finite(depths.numpy(), "the depth maps y")
        return feats, depths.float(), None, None

    def _setup_outputs(self, ds, targets, classes) -> int:
        return int(self.n_bins)

    def _finish(self, totals) -> None:
        self.train_depth_mean_ = float(totals[3] / max(float(totals[2]), 1.0)) if totals is not None else 0.0

    # ------------------------------------------------------------------ loss and decoding
    def _bins(self) -> torch.Tensor:
        return bin_centers(int(self.n_bins), float(self.min_depth), float(self.max_depth), self.bins, self.device)

    def _forward(self, feats: torch.Tensor, size) -> torch.Tensor:
        """Patch features [B, C, h, w] -> depth [B, 1, H, W] at ``size``; differentiable."""
        h, w = feats.shape[-2:]
        up = int(self.upsample)
        logits = self._head(_upsample(feats.float(), (h * up, w * up)))  # BNHead: upsample, then BN + conv
        return _upsample(decode_bins(logits, self._bins(), self.norm), size)

    def depth_from_features(self, feats: torch.Tensor, size=None) -> torch.Tensor:
        """Patch features [B, C, h, w] -> depth [B, H, W] (H, W = ``size`` or 16h, 16w); differentiable."""
        size = tuple(size) if size is not None else (16 * feats.shape[-2], 16 * feats.shape[-1])
        return self._forward(feats, size)[:, 0]

    def _loss_stats(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sig_loss_stats(pred[:, 0], target, float(self.min_depth), float(self.max_depth))

    @staticmethod
    def _loss(stats: torch.Tensor) -> torch.Tensor:
        return sig_loss_from_stats(stats)

    # ------------------------------------------------------------------ inference
    def predict_features(self, feats, size=None) -> torch.Tensor:
        """Features [N, C, h, w] -> depth float32 [N, H, W] on CPU (``size`` or 16h x 16w), in metres."""
        return self._features_out(feats, size)[:, 0]

    @torch.no_grad()
    def image_depth(self, image, tta: bool | None = None) -> np.ndarray:
        """One image (PIL / path / uint8 array) -> depth float32 [H, W] in metres at its original size."""
        from ..data.segmentation import to_pil
        from ..data.transforms import normalize

        self._ready_encoder()
        x = normalize(np.asarray(to_pil(image)))[None]
        d = self._infer(x).cpu()
        if self.tta if tta is None else tta:
            d = 0.5 * (d + self._infer(x.flip(-1)).cpu().flip(-1))
        return d[0, 0].numpy()

    def _predict_arrays(self, feats, size):
        return self.predict_features(feats, size).numpy()

    def _predict_image(self, img) -> np.ndarray:
        return self.image_depth(img)

    def eval_crop_for(self, ds) -> str | None:
        """The evaluation crop used on ``ds`` ("eigen" or None): ``eval_crop``, "auto" = the dataset's."""
        if self.eval_crop == "auto":
            return getattr(ds, "eval_crop", None)
        return None if self.eval_crop == "none" else self.eval_crop

    def _new_metric(self, ds):
        crop = (self.eval_crop if self.eval_crop == "eigen" else None) if ds is None else self.eval_crop_for(ds)
        metric = DepthMetric(float(self.min_depth), float(self.max_depth), crop)
        return metric, {"eval_crop": crop, "tta": ds is not None and bool(self.tta)}

    def _check_target(self, gt) -> None:
        if not valid_mask(gt, float(self.min_depth), float(self.max_depth)).any():
            raise DataError(f"no valid ground-truth pixel ({self.min_depth} < depth < {self.max_depth} m)")

    def score(self, X, y=None) -> float:
        """Negative RMSE (higher is better, scikit-learn convention) on ``X`` (see :meth:`evaluate`; depth
        metrics of :mod:`~svgfeat.heads.depth_metrics`, mean over images, plus "eval_crop" and "tta")."""
        return -self.evaluate(X, y)["rmse"]

    # ------------------------------------------------------------------ persistence
    def _config_extra(self) -> dict:
        return {"train_depth_mean": getattr(self, "train_depth_mean_", None)}

    def _load_extra(self, cfg) -> int:
        self.train_depth_mean_ = cfg.get("train_depth_mean")
        return int(self.n_bins)


# ------------------------------------------------------------------------------ helpers
def _check_finite(depths: np.ndarray, what) -> None:
    bad = int((~np.isfinite(depths)).sum())
    if bad:
        raise DataError(f"{what}: {bad} NaN/inf depth value(s); mark missing depth with 0")


class ArrayDepthDataset:
    """In-memory pairs: ``images`` (PIL / paths / uint8 [H, W, 3]) and ``depths`` (float [H, W], metres;
    0 = no measurement; NaN / inf refused)."""

    eval_crop = None

    def __init__(self, images, depths):
        if len(images) != len(depths):
            raise DataError(f"{len(images)} images but {len(depths)} depth maps")
        self._images, self._depths = list(images), [np.asarray(d, np.float32) for d in depths]
        for i, d in enumerate(self._depths):
            _check_finite(d, f"depth map {i}")
        self.paths = [f"arrays/{i:06d}" for i in range(len(self._images))]

    def __len__(self):
        return len(self._images)

    def load(self, i):
        from ..data.segmentation import to_pil

        return to_pil(self._images[i])

    def load_depth(self, i):
        return self._depths[i]

    def load_pair(self, i):
        img, d = self.load(i), self._depths[i]
        if img.size != (d.shape[1], d.shape[0]):
            raise DataError(f"image {i} is {img.size[0]}x{img.size[1]} but its depth map is "
                            f"{d.shape[1]}x{d.shape[0]} (W x H)")
        return img, d


def cached_depth_set(cache, data, group: str, stride: int, device):
    """Dense features + aligned depth targets from a cache and the depth dataset it was extracted from.

    Returns (features [N, C, h, w] (the cache's shared device tensor, stored dtype), depth float32 tensor
    [N, 16h/stride, 16w/stride] on CPU (nearest resampling), cache encoder spec). Rows are matched by path;
    views other than 0 (plain) and 1 (flip) are skipped.
    """
    from ..data.depth import open_depth_dataset, transform_depth

    return cached_dense_set(cache, data, group, stride, device, open_depth_dataset, lambda ds, i: ds.load_depth(i),
                            transform_depth, "depth")[:3]


def colorize(depth: np.ndarray, vmin: float = 0.0, vmax: float = 10.0) -> np.ndarray:
    """Depth [H, W] (metres) -> uint8 [H, W, 3] colour image (moved to :func:`svgfeat.visualize.colorize_depth`)."""
    from ..visualize import colorize_depth

    return colorize_depth(depth, vmin, vmax)
