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

Both use AdamW (lr 1e-3, wd 1e-3), ``warmup_iters`` of linear warm-up then cosine (or poly) decay.
Inference (``predict``) resizes the short side to ``base_size`` (long side capped at 4x), runs a sliding
window (``slide_crop`` / ``slide_stride``, default 512 / 341) or the whole image, averages overlapping
logits, and upsamples them bilinearly to the original image. Metrics: :mod:`svgfeat.heads.seg_metrics`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import nn

from .. import distributed as D
from ..errors import ConfigError, DataError
from ._dense import (  # noqa: F401  (shared with the depth head; re-exported for existing imports)
    DenseHeadMixin,
    _collate,
    _encoder_spec,
    _is_cache,
    _is_feature_array,
    _online_loader,
    _Pairs,
    _upsample,
    lr_factor,
    slide_inference,
)
from .seg_metrics import SegMetric

GROUPS = ("dino", "latent")
SCHEDULES = ("cosine", "poly")


class LinearSegHead(DenseHeadMixin, BaseEstimator):
    """BN + linear (1x1 conv) semantic-segmentation head on SVG / DINOv3 patch features.

    Parameters: encoder (an SVGEncoder; needed for online training and for predicting from images);
    group ("latent" = 384 + 8 SVG channels, or "dino"); num_classes (None: from the data); lr,
    weight_decay, max_iters, batch_size, warmup_iters, schedule ("cosine" | "poly"); crop_size, base_size
    (short side before jitter, default crop_size), scale_range, flip, cat_max_ratio (online augmentation);
    slide_crop, slide_stride, inference ("slide" | "whole"); mask_stride (cached mode); ignore_index;
    device; workers (DataLoader processes for online training); seed; verbose.

    Learned attributes: ``module_`` (nn.Sequential(BatchNorm2d(C), Conv2d(C, K, 1))), ``classes_``,
    ``num_classes_``, ``in_channels_``, ``history_`` (loss per iteration), ``step_times_`` (seconds per
    iteration, data loading included), ``n_iter_``, ``mode_``
    ("online" | "cached"), ``encoder_spec_`` (what produced the training features).
    """

    def __init__(self, encoder=None, group: str = "latent", num_classes: int | None = None, lr: float = 1e-3,
                 weight_decay: float = 1e-3, max_iters: int = 40000, batch_size: int = 16,
                 warmup_iters: int = 1500, schedule: str = "cosine", crop_size: int = 512,
                 base_size: int | None = None, scale_range=(0.5, 2.0), flip: bool = True,
                 cat_max_ratio: float = 0.75, slide_crop: int = 512, slide_stride: int = 341,
                 inference: str = "slide", mask_stride: int = 4, ignore_index: int = 255, device="cpu",
                 workers: int = 0, seed: int = 0, verbose: bool = False):
        self.encoder = encoder
        self.group = group
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_iters = max_iters
        self.batch_size = batch_size
        self.warmup_iters = warmup_iters
        self.schedule = schedule
        self.crop_size = crop_size
        self.base_size = base_size
        self.scale_range = scale_range
        self.flip = flip
        self.cat_max_ratio = cat_max_ratio
        self.slide_crop = slide_crop
        self.slide_stride = slide_stride
        self.inference = inference
        self.mask_stride = mask_stride
        self.ignore_index = ignore_index
        self.device = device
        self.workers = workers
        self.seed = seed
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        if self.group not in GROUPS:
            raise ConfigError(f"group={self.group!r}: expected one of {GROUPS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if self.inference not in ("slide", "whole"):
            raise ConfigError(f"inference={self.inference!r}: expected 'slide' or 'whole'")
        for name in ("max_iters", "batch_size", "crop_size", "slide_crop", "slide_stride", "mask_stride"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.warmup_iters) < 0:
            raise ConfigError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range={self.scale_range}: expected 0 < low <= high")

    def _encoder(self):
        if self.encoder is None:
            raise ConfigError("this needs an encoder (LinearSegHead(encoder=svgfeat.load_encoder(...))): "
                              "online training and prediction from images run it")
        enc = self.encoder
        if self.group == "latent" and enc.residual is None and enc.decoder is None:  # SVG-T2I P: latent = DINO
            raise ConfigError("group='latent' needs an SVG encoder with residual channels; this encoder is "
                              "DINOv3-only: use group='dino' or load an SVG checkpoint")
        return enc

    def _base(self) -> int:
        return int(self.base_size or self.crop_size)

    def _new_module(self, channels: int, k: int) -> nn.Module:
        m = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, k, kernel_size=1))
        nn.init.normal_(m[1].weight, std=0.01)
        nn.init.zeros_(m[1].bias)
        return m.to(self.device)

    def _optimizer(self):
        opt = torch.optim.AdamW(self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total, warm = int(self.max_iters), min(int(self.warmup_iters), int(self.max_iters) - 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, warm, self.schedule))
        return opt, sched

    def _step(self, feats: torch.Tensor, target: torch.Tensor, opt, sched) -> float:
        logits = _upsample(self.module_(feats.float()), target.shape[-2:])
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        opt.zero_grad(set_to_none=True)
        info = getattr(self, "dist_", None) or D.DistInfo()
        if info.distributed:  # torchrun data parallelism: every rank joins the all-reduce (ignored slice: zeros)
            (loss if torch.isfinite(loss) else logits.sum() * 0).backward()
            D.average_gradients(self.module_.parameters(), info)
            opt.step()
        elif torch.isfinite(loss):  # a batch with every pixel ignored has no gradient
            loss.backward()
            opt.step()
        sched.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None) -> "LinearSegHead":
        """Train on a segmentation dataset (online) or on cached dense features (see the module doc)."""
        self._check_params()
        torch.manual_seed(int(self.seed))
        if _is_cache(X) or _is_feature_array(X):
            return self._fit_cached(X, y)
        return self._fit_online(self._dataset(X, y))

    def _dataset(self, X, y=None):
        from ..data.segmentation import ArraySegDataset, SegDataset, open_seg_dataset

        if isinstance(X, SegDataset):
            if y is not None:
                raise DataError("y must be None when X is a segmentation dataset (its masks are the targets)")
            return X
        if isinstance(X, str):
            return open_seg_dataset(X)
        if y is None:
            raise DataError(f"got X of type {type(X).__name__} without masks y; pass a segmentation dataset, "
                            "(images, masks) lists, or a feature cache with its dataset as y")
        k = self.num_classes
        return ArraySegDataset(list(X), list(y), num_classes=k)

    def _fit_online(self, ds) -> "LinearSegHead":
        from ..data.segmentation import SegTrainAugment

        enc = self._encoder().to(self.device).eval()
        k = int(self.num_classes or ds.num_classes)
        C = enc.latent_channels if self.group == "latent" else enc.embed_dim
        self.classes_ = list(ds.classes) if len(ds.classes) == k else [f"class {i}" for i in range(k)]
        self.num_classes_, self.in_channels_, self.mode_ = k, C, "online"
        self.encoder_spec_ = _encoder_spec(enc)
        self.module_ = self._new_module(C, k).train()
        opt, sched = self._optimizer()
        aug = SegTrainAugment(self.crop_size, self._base(), self.scale_range, self.flip, self.cat_max_ratio,
                              self.ignore_index)
        loader = _online_loader(ds, aug, int(self.batch_size), int(self.max_iters), int(self.seed),
                                int(self.workers))
        self.history_, self.step_times_, t0 = [], [], time.time()
        tic = time.perf_counter()
        info = getattr(self, "dist_", None) or D.DistInfo()
        for it, (x, m) in enumerate(loader):  # step time includes loading + augmenting the batch
            x, m = x[info.rank::info.world], m[info.rank::info.world]  # this rank's slice of the global batch
            self._check_labels(m)
            with torch.no_grad():
                feats = enc.encode(x.to(self.device)).group(self.group)
            self.history_.append(self._step(feats, m.to(self.device), opt, sched))
            self.step_times_.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            self._log(it, t0)
        self.n_iter_ = len(self.history_)
        self.module_.eval()
        return self

    def _fit_cached(self, X, y) -> "LinearSegHead":
        feats, masks, classes, spec = self._cached_inputs(X, y)
        k = int(self.num_classes or len(classes) or int(masks[masks != self.ignore_index].max()) + 1)
        n, C = feats.shape[:2]
        self.classes_ = list(classes) if len(classes) == k else [f"class {i}" for i in range(k)]
        self.num_classes_, self.in_channels_, self.mode_, self.encoder_spec_ = k, C, "cached", spec
        self._check_labels(masks)
        self.module_ = self._new_module(C, k).train()
        opt, sched = self._optimizer()
        g = torch.Generator().manual_seed(int(self.seed))
        bs = min(int(self.batch_size), n)
        order, pos = torch.randperm(n, generator=g), 0
        info = getattr(self, "dist_", None) or D.DistInfo()
        self.history_, self.step_times_, t0 = [], [], time.time()
        for it in range(int(self.max_iters)):
            tic = time.perf_counter()
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + bs][info.rank::info.world]  # this rank's slice of the global batch
            pos += bs
            xb = feats[idx.to(feats.device)].to(self.device)
            self.history_.append(self._step(xb, masks[idx.to(masks.device)].to(self.device).long(), opt, sched))
            self.step_times_.append(time.perf_counter() - tic)
            self._log(it, t0)
        self.n_iter_ = len(self.history_)
        self.module_.eval()
        return self

    def _check_labels(self, masks: torch.Tensor) -> None:
        """CPU label tensor: every value must be a class index or ignore_index."""
        bad = (masks != self.ignore_index) & ((masks < 0) | (masks >= self.num_classes_))
        if bool(bad.any()):
            vals = sorted(set(masks[bad].unique().tolist()))[:5]
            raise DataError(f"mask labels {vals} are outside 0..{self.num_classes_ - 1} and are not ignore_index "
                            f"{self.ignore_index} (wrong num_classes, or ADE20K-style labels without "
                            "reduce_zero_label?)")

    def _cached_inputs(self, X, y):
        """-> (features tensor [N, C, h, w], masks uint8 tensor [N, hm, wm], classes, encoder spec)."""
        if _is_cache(X):
            return cached_training_set(X, y, self.group, self.mask_stride, self.device)
        feats = torch.as_tensor(np.asarray(X) if isinstance(X, np.ndarray) else X)
        if y is None:
            raise DataError("feature arrays need masks y (int [N, H, W])")
        masks = torch.as_tensor(np.stack([np.asarray(m) for m in y]) if not torch.is_tensor(y) else y)
        if masks.ndim != 3 or len(masks) != len(feats):
            raise DataError(f"masks must be [N, H, W] with N={len(feats)}, got {tuple(masks.shape)}")
        return feats, masks, [], None

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def logits_from_features(self, feats, size=None) -> torch.Tensor:
        """Features [N, C, h, w] -> logits [N, K, H, W] (H, W = ``size`` or 16h, 16w), float32 on CPU."""
        self._check_fitted()
        feats = torch.as_tensor(np.asarray(feats) if isinstance(feats, np.ndarray) else feats)
        if feats.ndim != 4 or feats.shape[1] != self.in_channels_:
            raise DataError(f"features must be [N, {self.in_channels_}, h, w], got {tuple(feats.shape)}")
        size = size or (16 * feats.shape[2], 16 * feats.shape[3])
        out = []
        for i in range(0, len(feats), 64):
            lg = self.module_(feats[i:i + 64].to(self.device).float())
            out.append(_upsample(lg, size).cpu())
        return torch.cat(out)

    def _window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [1, 3, h, w] (any size) -> logits [1, K, h, w]: pad to a multiple of 16, encode, upsample, crop."""
        enc = self.encoder
        p = enc.patch_size
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        feats = enc.encode(xp.to(self.device)).group(self.group)
        return _upsample(self.module_(feats.float()), xp.shape[-2:])[..., :h, :w]

    @torch.no_grad()
    def image_logits(self, image, mode: str | None = None) -> torch.Tensor:
        """One image (PIL / path / uint8 array) -> logits [K, H, W] at the original size (float32, CPU)."""
        from PIL import Image

        from ..data.segmentation import rescale_size, to_pil
        from ..data.transforms import normalize

        self._check_fitted()
        enc = self._encoder().to(self.device).eval()
        self._check_encoder(enc)
        img = to_pil(image)
        W0, H0 = img.size
        size = rescale_size(W0, H0, (4 * self._base(), self._base()))
        x = normalize(np.asarray(img.resize(size, Image.BILINEAR) if size != img.size else img))[None]
        mode = mode or self.inference
        if mode == "whole":
            logits = self._window_logits(x)
        else:
            logits = slide_inference(self._window_logits, x, int(self.slide_crop), int(self.slide_stride),
                                     self.num_classes_)
        return _upsample(logits, (H0, W0))[0].cpu()

    def _check_encoder(self, enc):
        C = enc.latent_channels if self.group == "latent" else enc.embed_dim
        if C != self.in_channels_:
            raise ConfigError(f"the head was trained on {self.in_channels_}-channel '{self.group}' features but "
                              f"the encoder gives {C} channels (a different encoder?)")

    def _images(self, X):
        from ..data.segmentation import SegDataset, open_seg_dataset

        if isinstance(X, str) and X.startswith("sample:"):
            X = open_seg_dataset(X)
        if isinstance(X, SegDataset):
            return (X.load(i) for i in range(len(X)))  # lazily: a dataset may not fit in memory
        if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.ndim == 4 and X.dtype == np.uint8):
            return list(X)
        return [X]

    def predict_proba(self, X) -> list[np.ndarray]:
        """Class probabilities per image: list of float32 [K, H, W] (original image sizes)."""
        if _is_feature_array(X):
            return list(self.logits_from_features(X).softmax(1).numpy())
        return [self.image_logits(im).softmax(0).numpy() for im in self._images(X)]

    def predict(self, X, size=None):
        """Label maps. Images / a dataset -> list of int64 [H, W] (original sizes); a feature array
        [N, C, h, w] -> int64 array [N, H, W] (``size`` or 16h x 16w)."""
        if _is_feature_array(X):
            return self.logits_from_features(X, size).argmax(1).numpy()
        return [self.image_logits(im).argmax(0).numpy() for im in self._images(X)]

    def evaluate(self, X, y=None, reduce_zero_label: bool = False) -> dict:
        """mIoU / mAcc / aAcc (fractions) + per-class IoU / Acc of this head on ``X``.

        ``X``: a segmentation dataset (online, sliding-window on the original images; ``y`` None), a feature
        cache (``y`` = its dataset; masks get the cache transform) or feature array (``y`` masks).
        """
        self._check_fitted()
        metric = SegMetric(self.num_classes_, self.ignore_index, reduce_zero_label, self.classes_)
        if _is_cache(X) or _is_feature_array(X):
            if _is_cache(X):
                feats, masks, _, _ = cached_training_set(X, y, self.group, 1, "cpu")
            else:
                feats, masks = X, torch.as_tensor(np.stack([np.asarray(m) for m in y]))
            for i in range(0, len(feats), 64):
                m = masks[i:i + 64]
                metric.update(self.predict(feats[i:i + 64], size=tuple(m.shape[-2:])), m.numpy())
        else:
            ds = self._dataset(X, y)
            for i in range(len(ds)):
                img, mask = ds.load_pair(i)
                metric.update(self.image_logits(img).argmax(0).numpy(), mask)
        return {**metric.compute(), "classes": list(self.classes_)}

    def score(self, X, y=None) -> float:
        """mIoU (fraction in [0, 1]) on ``X`` (see :meth:`evaluate`)."""
        return self.evaluate(X, y)["mIoU"]

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        self._check_fitted()
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "encoder"}
        params["scale_range"] = list(params["scale_range"])
        return {"kind": "LinearSegHead", "params": params, "classes": list(self.classes_),
                "num_classes": self.num_classes_, "in_channels": self.in_channels_, "mode": self.mode_,
                "encoder": self.encoder_spec_, "n_iter": self.n_iter_}

    @classmethod
    def load(cls, path, encoder=None, device="cpu") -> "LinearSegHead":
        """Read a head written by :meth:`save`; ``encoder`` is needed to predict from images."""
        from ..checkpoints import load_file, load_strict, read_safetensors_config
        from ..errors import CheckpointError

        cfg = read_safetensors_config(path)
        if not cfg or cfg.get("kind") != "LinearSegHead":
            raise CheckpointError(f"{path}: not a LinearSegHead checkpoint (no svgfeat LinearSegHead config)")
        params = dict(cfg["params"], device=device)
        params["scale_range"] = tuple(params["scale_range"])
        head = cls(encoder=encoder, **params)
        head.classes_, head.num_classes_ = cfg["classes"], int(cfg["num_classes"])
        head.in_channels_, head.mode_, head.encoder_spec_ = int(cfg["in_channels"]), cfg["mode"], cfg["encoder"]
        head.n_iter_, head.history_ = int(cfg.get("n_iter", 0)), []
        head.module_ = head._new_module(head.in_channels_, head.num_classes_)
        load_strict(head.module_, load_file(path), "LinearSegHead", str(path))
        head.module_.eval()
        return head


# ------------------------------------------------------------------------------ helpers
def cached_training_set(cache, data, group: str, mask_stride: int, device):
    """Dense features + aligned masks from a cache and the segmentation dataset it was extracted from.

    Returns (features [N, C, h, w] (the cache's shared device tensor, stored dtype), masks uint8 tensor
    [N, S/mask_stride, S/mask_stride] on CPU, classes, cache encoder spec). Rows are matched by path; views
    other than 0 (plain) and 1 (flip) are skipped.
    """
    from PIL import Image

    from ..data.segmentation import open_seg_dataset, transform_mask

    if group not in cache.groups:
        raise DataError(f"cache {cache.root} has no group {group!r} (it has {sorted(cache.groups)}); extract "
                        f"it with groups=('dino', 'latent')")
    if len(cache.groups[group]["shape"]) != 3:
        raise DataError(f"group {group!r} of cache {cache.root} is not a dense map [C, h, w]")
    if data is None:
        raise DataError("cached training needs the segmentation dataset the cache was made from as y")
    ds = open_seg_dataset(data)
    where = {p: i for i, p in enumerate(ds.paths)}
    spec = dict(cache.transform)
    C, h, w = cache.groups[group]["shape"]
    ph, pw = h * 16 // int(mask_stride), w * 16 // int(mask_stride)
    rows, masks = [], []
    views = getattr(cache, "view_ids", np.zeros(len(cache), dtype=np.int64))
    for r, p in enumerate(cache.paths):
        if p not in where or views[r] > 1:
            continue
        m = transform_mask(ds.load_mask(where[p]), dict(spec, hflip=bool(spec.get("hflip")) ^ (views[r] == 1)))
        if m.shape != (16 * h, 16 * w):
            raise DataError(f"{p}: the transformed mask is {m.shape} but the features cover {(16 * h, 16 * w)}; "
                            "extract the cache with preset 'resize' or 'none' (images of one size)")
        if m.shape != (ph, pw):
            m = np.asarray(Image.fromarray(m.astype(np.uint8), "L").resize((pw, ph), Image.NEAREST))
        rows.append(r)
        masks.append(m.astype(np.uint8))
    if not rows:
        raise DataError(f"no row of cache {cache.root} matches a path of dataset {ds.spec}")
    feats = cache.to(device, [group])[group]
    if len(rows) != len(cache):
        feats = feats[torch.as_tensor(rows, device=feats.device)]
    return feats, torch.as_tensor(np.stack(masks)), ds.classes, cache.encoder_spec

