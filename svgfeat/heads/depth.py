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
cosine decay (DINOv3 uses a one-cycle schedule with 12.8k of 38.4k iterations warming up; ours has the same
warm-up length and a cosine tail to 0).

Inference: the whole image (sides padded to a multiple of 16) or a sliding window, optional flip TTA
(mean of the depth of the image and of its mirror), depth returned at the original image size.
Metrics: :mod:`svgfeat.heads.depth_metrics` (Eigen crop for NYUv2).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import nn

from ..errors import ConfigError, DataError
from ._dense import (
    DenseHeadMixin,
    _encoder_spec,
    _is_cache,
    _is_feature_array,
    _online_loader,
    _upsample,
    lr_factor,
    slide_inference,
)
from .depth_metrics import DepthMetric

GROUPS = ("dino", "latent")
BINS = ("linear", "log")
NORMS = ("linear", "softmax")
EVAL_CROPS = ("auto", "eigen", "none")


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


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 1e-3, max_depth: float = 10.0):
    """SigLoss over the valid pixels of a batch: sqrt(Var(g) + 0.15 mean(g)^2), g = ln pred - ln gt.

    ``pred``, ``gt``: [B, H, W] (or [B, 1, H, W]) in metres. NaN when no pixel is valid.
    """
    valid = (gt > min_depth) & (gt < max_depth)
    if not bool(valid.any()):
        return pred.sum() * float("nan")
    g = torch.log(pred[valid]) - torch.log(gt[valid])
    dg = g.var(unbiased=False) + 0.15 * g.mean() ** 2
    return torch.sqrt(dg)


class LinearDepthHead(DenseHeadMixin, BaseEstimator):
    """BN + linear (1x1 conv) depth head with bin classification-regression (see the module doc).

    Parameters: encoder (an SVGEncoder; needed for online training and for predicting from images);
    group ("latent" | "dino"); n_bins, min_depth, max_depth, bins ("linear" | "log"), norm ("linear" |
    "softmax"), upsample; lr, weight_decay, grad_clip, max_iters, batch_size, warmup_iters, schedule
    ("cosine" | "poly"); crop_size (h, w), flip, brightness (online augmentation); inference ("whole" |
    "slide"), slide_crop, slide_stride, tta (flip test-time augmentation); eval_crop ("auto": the dataset's,
    i.e. Eigen for NYUv2; "eigen"; "none"); depth_stride (target resolution in cached mode); device; workers;
    seed; verbose.

    Learned attributes: ``module_``, ``in_channels_``, ``history_`` (loss per iteration), ``step_times_``,
    ``n_iter_``, ``mode_`` ("online" | "cached"), ``encoder_spec_``, ``train_depth_mean_`` (mean valid
    target depth seen in training: the constant baseline's prediction).
    """

    def __init__(self, encoder=None, group: str = "latent", n_bins: int = 256, min_depth: float = 1e-3,
                 max_depth: float = 10.0, bins: str = "linear", norm: str = "linear", upsample: int = 4,
                 lr: float = 3e-4, weight_decay: float = 1e-4, grad_clip: float | None = 35.0,
                 max_iters: int = 38400, batch_size: int = 16, warmup_iters: int = 12800,
                 schedule: str = "cosine", crop_size=(416, 544), flip: bool = True, brightness=(0.75, 1.25),
                 inference: str = "whole", slide_crop=(416, 544), slide_stride=(208, 272), tta: bool = True,
                 eval_crop: str = "auto", depth_stride: int = 4, device="cpu", workers: int = 0, seed: int = 0,
                 verbose: bool = False):
        self.encoder = encoder
        self.group = group
        self.n_bins = n_bins
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.bins = bins
        self.norm = norm
        self.upsample = upsample
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.max_iters = max_iters
        self.batch_size = batch_size
        self.warmup_iters = warmup_iters
        self.schedule = schedule
        self.crop_size = crop_size
        self.flip = flip
        self.brightness = brightness
        self.inference = inference
        self.slide_crop = slide_crop
        self.slide_stride = slide_stride
        self.tta = tta
        self.eval_crop = eval_crop
        self.depth_stride = depth_stride
        self.device = device
        self.workers = workers
        self.seed = seed
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        for name, allowed in (("group", GROUPS), ("bins", BINS), ("norm", NORMS), ("eval_crop", EVAL_CROPS),
                              ("schedule", ("cosine", "poly")), ("inference", ("whole", "slide"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("n_bins", "max_iters", "batch_size", "upsample", "depth_stride"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.warmup_iters) < 0:
            raise ConfigError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        if not 0 < float(self.min_depth) < float(self.max_depth):
            raise ConfigError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        for name in ("crop_size", "slide_crop", "slide_stride"):
            if min(_hw(getattr(self, name))) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def _encoder(self):
        if self.encoder is None:
            raise ConfigError("this needs an encoder (LinearDepthHead(encoder=svgfeat.load_encoder(...))): "
                              "online training and prediction from images run it")
        if self.group == "latent" and self.encoder.residual is None:
            raise ConfigError("group='latent' needs an SVG encoder with residual channels; this encoder is "
                              "DINOv3-only: use group='dino' or load an SVG checkpoint")
        return self.encoder

    def _new_module(self, channels: int) -> nn.Module:
        m = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, int(self.n_bins), kernel_size=1))
        nn.init.normal_(m[1].weight, std=0.01)
        nn.init.zeros_(m[1].bias)
        return m.to(self.device)

    def _bins(self) -> torch.Tensor:
        return bin_centers(int(self.n_bins), float(self.min_depth), float(self.max_depth), self.bins, self.device)

    def depth_from_features(self, feats: torch.Tensor, size=None) -> torch.Tensor:
        """Patch features [B, C, h, w] -> depth [B, H, W] (H, W = ``size`` or 16h, 16w); differentiable."""
        h, w = feats.shape[-2:]
        up = int(self.upsample)
        logits = self.module_(_upsample(feats.float(), (h * up, w * up)))  # BNHead: upsample, then BN + conv
        depth = decode_bins(logits, self._bins(), self.norm)
        size = tuple(size) if size is not None else (16 * h, 16 * w)
        return _upsample(depth, size)[:, 0]

    def _optimizer(self):
        opt = torch.optim.AdamW(self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                betas=(0.9, 0.99))
        total, warm = int(self.max_iters), min(int(self.warmup_iters), int(self.max_iters) - 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, warm, self.schedule))
        return opt, sched

    def _step(self, feats: torch.Tensor, target: torch.Tensor, opt, sched) -> float:
        pred = self.depth_from_features(feats, target.shape[-2:])
        loss = sig_loss(pred, target, float(self.min_depth), float(self.max_depth))
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):  # a batch without a valid pixel has no gradient
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.module_.parameters(), float(self.grad_clip))
            opt.step()
        sched.step()
        valid = (target > self.min_depth) & (target < self.max_depth)
        self._depth_sum += float(target[valid].double().sum())
        self._depth_n += int(valid.sum())
        return float(loss.detach())

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None) -> "LinearDepthHead":
        """Train on a depth dataset (online) or on cached dense features (see the module doc)."""
        self._check_params()
        torch.manual_seed(int(self.seed))
        self._depth_sum, self._depth_n = 0.0, 0
        if _is_cache(X) or _is_feature_array(X):
            self._fit_cached(X, y)
        else:
            self._fit_online(self._dataset(X, y))
        self.train_depth_mean_ = self._depth_sum / max(self._depth_n, 1)
        self.n_iter_ = len(self.history_)
        self.module_.eval()
        return self

    def _dataset(self, X, y=None):
        from ..data.depth import DepthDataset, open_depth_dataset

        if isinstance(X, DepthDataset):
            if y is not None:
                raise DataError("y must be None when X is a depth dataset (its depth maps are the targets)")
            return X
        if isinstance(X, str):
            return open_depth_dataset(X)
        if y is None:
            raise DataError(f"got X of type {type(X).__name__} without depth maps y; pass a depth dataset, "
                            "(images, depths) lists, or a feature cache with its dataset as y")
        return ArrayDepthDataset(list(X), list(y))

    def _fit_online(self, ds) -> None:
        from ..data.depth import DepthTrainAugment

        enc = self._encoder().to(self.device).eval()
        C = enc.latent_channels if self.group == "latent" else enc.embed_dim
        self.in_channels_, self.mode_, self.encoder_spec_ = C, "online", _encoder_spec(enc)
        self.module_ = self._new_module(C).train()
        opt, sched = self._optimizer()
        aug = DepthTrainAugment(_hw(self.crop_size), self.flip, self.brightness)
        loader = _online_loader(ds, aug, int(self.batch_size), int(self.max_iters), int(self.seed),
                                int(self.workers))
        self.history_, self.step_times_, t0 = [], [], time.time()
        tic = time.perf_counter()
        for it, (x, d) in enumerate(loader):  # step time includes loading + augmenting the batch
            with torch.no_grad():
                feats = enc.encode(x.to(self.device)).group(self.group)
            self.history_.append(self._step(feats, d.to(self.device), opt, sched))
            self.step_times_.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            self._log(it, t0)

    def _fit_cached(self, X, y) -> None:
        feats, depths, spec = self._cached_inputs(X, y, int(self.depth_stride))
        n, C = feats.shape[:2]
        self.in_channels_, self.mode_, self.encoder_spec_ = C, "cached", spec
        self.module_ = self._new_module(C).train()
        opt, sched = self._optimizer()
        g = torch.Generator().manual_seed(int(self.seed))
        bs = min(int(self.batch_size), n)
        order, pos = torch.randperm(n, generator=g), 0
        self.history_, self.step_times_, t0 = [], [], time.time()
        for it in range(int(self.max_iters)):
            tic = time.perf_counter()
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + bs]
            pos += bs
            xb = feats[idx.to(feats.device)].to(self.device)
            self.history_.append(self._step(xb, depths[idx].to(self.device), opt, sched))
            self.step_times_.append(time.perf_counter() - tic)
            self._log(it, t0)

    def _cached_inputs(self, X, y, stride: int):
        """-> (features [N, C, h, w], depth float32 [N, 16h/stride, 16w/stride] on CPU, encoder spec)."""
        if _is_cache(X):
            return cached_depth_set(X, y, self.group, stride, self.device)
        feats = torch.as_tensor(np.asarray(X) if isinstance(X, np.ndarray) else X)
        if y is None:
            raise DataError("feature arrays need depth maps y (float [N, H, W], metres)")
        depths = torch.as_tensor(np.stack([np.asarray(d, np.float32) for d in y]) if not torch.is_tensor(y) else y)
        if depths.ndim != 3 or len(depths) != len(feats):
            raise DataError(f"depth maps must be [N, H, W] with N={len(feats)}, got {tuple(depths.shape)}")
        return feats, depths.float(), None

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_features(self, feats, size=None) -> torch.Tensor:
        """Features [N, C, h, w] -> depth float32 [N, H, W] on CPU (``size`` or 16h x 16w), in metres."""
        self._check_fitted()
        feats = torch.as_tensor(np.asarray(feats) if isinstance(feats, np.ndarray) else feats)
        if feats.ndim != 4 or feats.shape[1] != self.in_channels_:
            raise DataError(f"features must be [N, {self.in_channels_}, h, w], got {tuple(feats.shape)}")
        return torch.cat([self.depth_from_features(feats[i:i + 64].to(self.device), size).cpu()
                          for i in range(0, len(feats), 64)])

    def _window_depth(self, x: torch.Tensor) -> torch.Tensor:
        """x [1, 3, h, w] (any size) -> depth [1, 1, h, w]: pad to a multiple of 16, encode, decode, crop."""
        enc = self.encoder
        p = enc.patch_size
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        feats = enc.encode(xp.to(self.device)).group(self.group)
        return self.depth_from_features(feats, xp.shape[-2:])[:, None, :h, :w]

    def _depth(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference == "whole":
            return self._window_depth(x)
        return slide_inference(self._window_depth, x, _hw(self.slide_crop), _hw(self.slide_stride), 1)

    @torch.no_grad()
    def image_depth(self, image, tta: bool | None = None) -> np.ndarray:
        """One image (PIL / path / uint8 array) -> depth float32 [H, W] in metres at its original size."""
        from ..data.segmentation import to_pil
        from ..data.transforms import normalize

        self._check_fitted()
        enc = self._encoder().to(self.device).eval()
        C = enc.latent_channels if self.group == "latent" else enc.embed_dim
        if C != self.in_channels_:
            raise ConfigError(f"the head was trained on {self.in_channels_}-channel '{self.group}' features but "
                              f"the encoder gives {C} channels (a different encoder?)")
        x = normalize(np.asarray(to_pil(image)))[None]
        d = self._depth(x).cpu()
        if self.tta if tta is None else tta:
            d = 0.5 * (d + self._depth(x.flip(-1)).cpu().flip(-1))
        return d[0, 0].numpy()

    def _images(self, X):
        from ..data.depth import DepthDataset, open_depth_dataset

        if isinstance(X, str) and X.startswith("sample:"):
            X = open_depth_dataset(X)
        if isinstance(X, DepthDataset):
            return (X.load(i) for i in range(len(X)))  # lazily
        if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.ndim == 4 and X.dtype == np.uint8):
            return list(X)
        return [X]

    def predict(self, X, size=None):
        """Depth in metres. Images / a dataset -> list of float32 [H, W] (original sizes); a feature array
        [N, C, h, w] -> float32 array [N, H, W] (``size`` or 16h x 16w)."""
        if _is_feature_array(X):
            return self.predict_features(X, size).numpy()
        return [self.image_depth(im) for im in self._images(X)]

    def _crop_for(self, ds) -> str | None:
        if self.eval_crop == "auto":
            return getattr(ds, "eval_crop", None)
        return None if self.eval_crop == "none" else self.eval_crop

    def evaluate(self, X, y=None) -> dict:
        """Depth metrics (:mod:`~svgfeat.heads.depth_metrics`, mean over images) of this head on ``X``.

        ``X``: a depth dataset (images at their original size, whole-image / sliding-window inference with
        the head's ``tta``; ``y`` None), a feature cache (``y`` = its dataset; depth under the cache
        transform) or a feature array (``y`` depth maps). Adds "eval_crop" and "tta".
        """
        self._check_fitted()
        if _is_cache(X) or _is_feature_array(X):
            feats, depths, _ = self._cached_inputs(X, y, 1)
            crop = self.eval_crop if self.eval_crop in ("eigen",) else None
            metric = DepthMetric(float(self.min_depth), float(self.max_depth), crop)
            for i in range(0, len(feats), 64):
                d = depths[i:i + 64]
                metric.update(self.predict_features(feats[i:i + 64], tuple(d.shape[-2:])), d)
            return {**metric.compute(), "eval_crop": crop, "tta": False}
        ds = self._dataset(X, y)
        crop = self._crop_for(ds)
        metric = DepthMetric(float(self.min_depth), float(self.max_depth), crop)
        for i in range(len(ds)):
            img, gt = ds.load_pair(i)
            metric.update(self.image_depth(img), gt)
        return {**metric.compute(), "eval_crop": crop, "tta": bool(self.tta)}

    def score(self, X, y=None) -> float:
        """Negative RMSE (higher is better, scikit-learn convention) on ``X`` (see :meth:`evaluate`)."""
        return -self.evaluate(X, y)["rmse"]

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        self._check_fitted()
        params = {k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in self.get_params(deep=False).items() if k != "encoder"}
        return {"kind": "LinearDepthHead", "params": params, "in_channels": self.in_channels_, "mode": self.mode_,
                "encoder": self.encoder_spec_, "n_iter": self.n_iter_,
                "train_depth_mean": getattr(self, "train_depth_mean_", None)}

    @classmethod
    def load(cls, path, encoder=None, device="cpu") -> "LinearDepthHead":
        """Read a head written by :meth:`save`; ``encoder`` is needed to predict from images."""
        from ..checkpoints import load_file, load_strict, read_safetensors_config
        from ..errors import CheckpointError

        cfg = read_safetensors_config(path)
        if not cfg or cfg.get("kind") != "LinearDepthHead":
            raise CheckpointError(f"{path}: not a LinearDepthHead checkpoint (no svgfeat LinearDepthHead config)")
        params = dict(cfg["params"], device=device)
        for k in ("crop_size", "slide_crop", "slide_stride", "brightness"):
            if isinstance(params.get(k), list):
                params[k] = tuple(params[k])
        head = cls(encoder=encoder, **params)
        head.in_channels_, head.mode_, head.encoder_spec_ = int(cfg["in_channels"]), cfg["mode"], cfg["encoder"]
        head.n_iter_, head.history_ = int(cfg.get("n_iter", 0)), []
        head.train_depth_mean_ = cfg.get("train_depth_mean")
        head.module_ = head._new_module(head.in_channels_)
        load_strict(head.module_, load_file(path), "LinearDepthHead", str(path))
        head.module_.eval()
        return head


# ------------------------------------------------------------------------------ helpers
def _hw(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


class ArrayDepthDataset:
    """In-memory pairs: ``images`` (PIL / paths / uint8 [H, W, 3]) and ``depths`` (float [H, W], metres)."""

    eval_crop = None

    def __init__(self, images, depths):
        if len(images) != len(depths):
            raise DataError(f"{len(images)} images but {len(depths)} depth maps")
        self._images, self._depths = list(images), [np.asarray(d, np.float32) for d in depths]

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
    from ..data.depth import open_depth_dataset, resize_depth, transform_depth

    if group not in cache.groups:
        raise DataError(f"cache {cache.root} has no group {group!r} (it has {sorted(cache.groups)}); extract "
                        f"it with groups=('dino', 'latent')")
    if len(cache.groups[group]["shape"]) != 3:
        raise DataError(f"group {group!r} of cache {cache.root} is not a dense map [C, h, w]")
    if data is None:
        raise DataError("cached training needs the depth dataset the cache was made from as y")
    ds = open_depth_dataset(data)
    where = {p: i for i, p in enumerate(ds.paths)}
    spec = dict(cache.transform)
    C, h, w = cache.groups[group]["shape"]
    th, tw = 16 * h // int(stride), 16 * w // int(stride)
    rows, depths = [], []
    views = getattr(cache, "view_ids", np.zeros(len(cache), dtype=np.int64))
    for r, p in enumerate(cache.paths):
        if p not in where or views[r] > 1:
            continue
        d = transform_depth(ds.load_depth(where[p]), dict(spec, hflip=bool(spec.get("hflip")) ^ (views[r] == 1)))
        if d.shape != (16 * h, 16 * w):
            raise DataError(f"{p}: the transformed depth map is {d.shape} but the features cover "
                            f"{(16 * h, 16 * w)}; extract the cache with preset 'resize' or 'none'")
        rows.append(r)
        depths.append(resize_depth(d, (tw, th)))
    if not rows:
        raise DataError(f"no row of cache {cache.root} matches a path of dataset {ds.spec}")
    feats = cache.to(device, [group])[group]
    if len(rows) != len(cache):
        feats = feats[torch.as_tensor(rows, device=feats.device)]
    return feats, torch.as_tensor(np.stack(depths)), cache.encoder_spec


# inferno-like anchors (dark far, bright near), linearly interpolated
_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colorize(depth: np.ndarray, vmin: float = 0.0, vmax: float = 10.0) -> np.ndarray:
    """Depth [H, W] (metres) -> uint8 [H, W, 3] colour image: near bright yellow, far dark purple."""
    if not vmax > vmin:
        raise ConfigError(f"colour range needs vmax > vmin, got {vmin}, {vmax}")
    t = 1.0 - np.clip((np.asarray(depth, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    pos = t * (len(_CMAP) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(_CMAP) - 2)
    frac = (pos - lo)[..., None]
    return np.round(_CMAP[lo] * (1 - frac) + _CMAP[lo + 1] * frac).astype(np.uint8)
