"""Dense-head training, owned in one place: :class:`DenseHead` is the base of the segmentation and depth heads.

It owns what the two have in common: the encoder rules (``group='latent'`` needs an SVG encoder; SVG-T2I-P's
latent is its DINOv3 map, fine for both), AdamW with linear warm-up then cosine / poly decay, the training
step, online (augmented crops through the frozen encoder) and cached (dense-feature cache or arrays) fitting,
whole-image and sliding-window inference, evaluation with progress, persistence, and data parallelism.

**Data parallel under torchrun** (an initialised process group, :func:`svgfeat.distributed.current`): every
rank decodes and encodes only its share (items ``rank::world``) of each global batch; the BatchNorm sees the
statistics of the whole global batch (:class:`SyncStatsBatchNorm2d`), and the loss is the loss of the whole
global batch: each rank contributes sufficient statistics (for cross-entropy: the sum and the count; for
SigLoss: the sums of g, g^2 and the count), these are all-reduced, and each rank back-propagates the global
loss through its own share. With the gradients averaged, every rank takes the step one process takes on the
global batch. Subclasses return those statistics (``_loss_stats``) and turn their sum into the loss
(``_loss``); they also define the decoding (``_forward``), the data (``_dataset``, ``_augment``,
``_cached_set``), the metric and their own parameters.

**Numerics** (``precision``: "fp32" default | "bf16" | "fp16", one :class:`~svgfeat.numerics.Numerics` from
:meth:`DenseHead._numerics`): the encoder forward (online training, prediction from images) and the head's
BN + conv run under its autocast; the head's outputs are cast to float32 at once, so the decoding, the loss
statistics, the metrics and every prediction are float32; fp16 training scales the loss (``torch.amp.GradScaler``,
steps with inf/NaN gradients skipped on every rank alike). head.json records it under "numerics".
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn

from .. import distributed as D
from ..errors import ConfigError, DataError
from ._base import is_cache as _is_cache
from ._dense_data import _online_loader, cached_dense_set  # noqa: F401  (cached_dense_set: for the subclasses)
from ._dense_ops import (  # noqa: F401  (re-exported for the subclasses and existing imports)
    SyncStatsBatchNorm2d,
    _as_tensor,
    _is_feature_array,
    _upsample,
    as_numeric,
    hw,
    lr_factor,
    progress,
    slide_inference,
)

GROUPS = ("dino", "latent")
SCHEDULES = ("cosine", "poly")
INFERENCE = ("slide", "whole")


def _encoder_spec(enc) -> dict:
    """The fields a feature cache records about its encoder."""
    from ..extraction import encoder_spec

    return encoder_spec(enc)


class DenseHead(BaseEstimator):
    """BN + linear (1x1 conv) head on dense patch features; see the module doc for what subclasses define.

    Subclass hooks: ``_kind`` (its name), ``_betas``, ``_data_module`` / ``_dataset_class`` / ``_opener`` /
    ``_data_noun`` / ``_arrays_dataset`` / ``_arrays(images, targets)`` (its data), ``_augment()``, ``_cached_set(X, y, stride, device)`` -> (feats, targets, spec, classes),
    ``_setup_outputs(ds, targets, classes)`` -> output channels, ``_forward(feats, size)``,
    ``_loss_stats(out, target)``, ``_loss(stats)``, ``_train_stride``, ``_predict_image(img)``,
    ``_predict_arrays(feats, size)``, ``_new_metric(ds)`` -> (metric, extra result keys), ``_config_extra()``,
    ``_load_extra(cfg)``.
    """

    _kind = "DenseHead"
    _betas = (0.9, 0.999)
    grad_clip = None

    def _store(self, params: dict) -> None:
        for k, v in params.items():
            if k not in ("self", "__class__"):
                setattr(self, k, v)

    # ------------------------------------------------------------------ validation
    _choices: dict = {}  # subclass parameters with a fixed set of values
    _positive: tuple = ()  # subclass integer parameters that must be >= 1
    _stride_param = ""  # the parameter giving the target resolution in cached mode

    @property
    def _train_stride(self) -> int:
        return int(getattr(self, self._stride_param))

    def _check_params(self):
        choices = {"group": GROUPS, "schedule": SCHEDULES, "inference": INFERENCE, **self._choices}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("max_iters", "batch_size", *self._positive):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.warmup_iters) < 0:
            raise ConfigError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        for name in ("slide_crop", "slide_stride"):
            if min(hw(getattr(self, name))) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        self._numerics()  # a precision the device cannot run, or a device that is not here: one ConfigError

    def _numerics(self):
        """The :class:`~svgfeat.numerics.Numerics` of the encoder and head forward passes (``precision`` on
        ``device``, checked against this machine)."""
        from ..numerics import Numerics

        return Numerics.for_device(self.device, getattr(self, "precision", "fp32"))

    def _encode(self, enc, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] (normalised) -> the ``group`` patch map [B, C, h, w] under the autocast (no grad)."""
        with torch.no_grad(), self._numerics().autocast():
            return enc.encode(x.to(self.device)).group(self.group)

    def _head(self, feats: torch.Tensor) -> torch.Tensor:
        """BN + conv (``module_``) on features [B, C, h, w] under the autocast -> [B, K, h, w] float32."""
        with self._numerics().autocast():
            return self.module_(feats.float()).float()

    def _check_fitted(self):
        if not hasattr(self, "module_"):
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted; call fit() or {name}.load()")

    def _encoder(self):
        if self.encoder is None:
            raise ConfigError(f"this needs an encoder ({self._kind}(encoder=svgfeat.load_encoder(...))): "
                              "online training and prediction from images run it")
        enc = self.encoder
        if self.group == "latent" and enc.residual is None and enc.decoder is None:  # SVG-T2I P: latent = DINO
            raise ConfigError("group='latent' needs an SVG encoder with residual channels; this encoder is "
                              "DINOv3-only: use group='dino' or load an SVG checkpoint")
        return enc

    def _channels(self, enc) -> int:
        return enc.latent_channels if self.group == "latent" else enc.embed_dim

    def _ready_encoder(self):
        """The encoder for prediction from images, checked against the channels the head was trained on."""
        self._check_fitted()
        enc = self._encoder().to(self.device).eval()
        if self._channels(enc) != self.in_channels_:
            raise ConfigError(f"the head was trained on {self.in_channels_}-channel '{self.group}' features but "
                              f"the encoder gives {self._channels(enc)} channels (a different encoder?)")
        return enc

    # ------------------------------------------------------------------ training
    def _new_module(self, channels: int, k: int) -> nn.Module:
        m = nn.Sequential(SyncStatsBatchNorm2d(channels), nn.Conv2d(channels, k, kernel_size=1))
        nn.init.normal_(m[1].weight, std=0.01)
        nn.init.zeros_(m[1].bias)
        return m.to(self.device)

    def _optimizer(self):
        opt = torch.optim.AdamW(self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                betas=self._betas)
        total, warm = int(self.max_iters), min(int(self.warmup_iters), int(self.max_iters) - 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, warm, self.schedule))
        return opt, sched

    def _grad_scaler(self):
        """fp16: a loss scaler (the fp16 gradients of a per-pixel mean loss underflow without one); else None."""
        num = self._numerics()
        return torch.amp.GradScaler(num.device_type) if num.precision == "fp16" else None

    def _step(self, feats: torch.Tensor, target: torch.Tensor, opt, sched, info: D.DistInfo) -> float:
        """One step on the global batch: this rank's share -> global loss statistics -> averaged gradient."""
        local = self._loss_stats(self._forward(feats, target.shape[-2:]), target)
        total = D.all_reduce_sum(local.detach().clone(), info)
        self._totals = total if self._totals is None else self._totals + total
        loss = self._loss(total + (local - local.detach()))  # value: the global loss; gradient: this share's
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):  # the same decision on every rank: a batch with no valid pixel has no gradient
            scaler = getattr(self, "_scaler", None)
            (loss * info.world if scaler is None else scaler.scale(loss * info.world)).backward()
            D.average_gradients(self.module_.parameters(), info)
            if scaler is not None:  # the averaged gradients: every rank finds the same inf/NaN and skips alike
                scaler.unscale_(opt)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.module_.parameters(), float(self.grad_clip))
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
        sched.step()
        return float(loss.detach())

    def fit(self, X, y=None):
        """Train online on a dataset (``encoder`` given) or on cached dense features / arrays; under torchrun
        data parallel (see the module doc)."""
        self._check_params()
        info = D.current()
        if int(self.batch_size) % info.world:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by the {info.world} torchrun ranks")
        torch.manual_seed(int(self.seed))
        if _is_cache(X) or _is_feature_array(X):
            feats, targets, spec, classes = self._cached_set(X, y, int(self._train_stride), self.device)
            k = self._setup_outputs(None, targets, classes)
            self._start(feats.shape[1], k, "cached", spec)
            batches = self._cached_batches(feats, targets, info)
        else:
            ds = self._dataset(X, y)
            enc = self._encoder().to(self.device).eval()
            k = self._setup_outputs(ds, None, None)
            self._start(self._channels(enc), k, "online", _encoder_spec(enc))
            batches = self._online_batches(ds, enc, info)
        opt, sched = self._optimizer()
        self._scaler = self._grad_scaler()
        self.history_, self.step_times_, self._totals, t0 = [], [], None, time.time()
        tic = time.perf_counter()
        for it, (xb, tb) in enumerate(batches):  # step time includes loading (+ augmenting, encoding) the batch
            self.history_.append(self._step(xb, tb, opt, sched, info))
            self.step_times_.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            self._log(it, t0, info)
        self.n_iter_, self._scaler = len(self.history_), None
        self._finish(self._totals)
        self.module_.eval()
        return self

    def _start(self, channels: int, k: int, mode: str, spec) -> None:
        self.in_channels_, self.mode_, self.encoder_spec_ = channels, mode, spec
        self.module_ = self._new_module(channels, k).train()

    def _finish(self, totals) -> None:
        """Subclass hook: learned attributes from the loss statistics summed over all steps."""

    def _check_batch(self, target: torch.Tensor) -> None:
        """Subclass hook: refuse a bad batch of targets (CPU tensor)."""

    def _online_batches(self, ds, enc, info):
        loader = _online_loader(ds, self._augment(), int(self.batch_size), int(self.max_iters), int(self.seed),
                                int(self.workers), info.rank, info.world)
        for x, t in loader:
            self._check_batch(t)
            yield self._encode(enc, x), t.to(self.device)

    def _cached_batches(self, feats, targets, info):
        n = len(feats)
        g = torch.Generator().manual_seed(int(self.seed))
        bs = min(int(self.batch_size), n)
        order, pos = torch.randperm(n, generator=g), 0
        for _ in range(int(self.max_iters)):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos:pos + bs][info.rank::info.world]  # this rank's share of the global batch
            pos += bs
            yield feats[idx.to(feats.device)].to(self.device), targets[idx].to(self.device)

    def _log(self, it: int, t0: float, info: D.DistInfo) -> None:
        last = it + 1 == int(self.max_iters)
        if self.verbose and info.is_main and (it % max(1, int(self.max_iters) // 20) == 0 or last):
            print(f"  iter {it + 1}/{self.max_iters}  loss {self.history_[-1]:.4f}  ({time.time() - t0:.1f}s)")

    def _array_targets(self, X, y, what: str, dtype=None):
        """Feature-array training / evaluation: (features tensor, targets tensor [N, H, W])."""
        feats = _as_tensor(X)
        if y is None:
            raise DataError(f"feature arrays need {what} y")
        t = torch.as_tensor(np.stack([np.asarray(m, dtype) for m in y]) if not torch.is_tensor(y) else y)
        if t.ndim != 3 or len(t) != len(feats):
            raise DataError(f"{what} must be [N, H, W] with N={len(feats)}, got {tuple(t.shape)}")
        return feats, t

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _features_out(self, feats, size=None) -> torch.Tensor:
        """Features [N, C, h, w] -> outputs [N, K, H, W] float32 on CPU (``size`` or 16h x 16w)."""
        self._check_fitted()
        feats = _as_tensor(feats)
        if feats.ndim != 4 or feats.shape[1] != self.in_channels_:
            raise DataError(f"features must be [N, {self.in_channels_}, h, w], got {tuple(feats.shape)}")
        size = tuple(size) if size is not None else (16 * feats.shape[2], 16 * feats.shape[3])
        return torch.cat([self._forward(feats[i:i + 64].to(self.device), size).cpu()
                          for i in range(0, len(feats), 64)])

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        """x [1, 3, h, w] (any size) -> outputs [1, K, h, w]: pad to a multiple of 16, encode, decode, crop."""
        p = self.encoder.patch_size
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        return self._forward(self._encode(self.encoder, xp), xp.shape[-2:])[..., :h, :w]

    def _infer(self, x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        if (mode or self.inference) == "whole":
            return self._window(x)
        return slide_inference(self._window, x, hw(self.slide_crop), hw(self.slide_stride))

    def _data(self, name: str):
        """An attribute of this head's data module (``_data_module``: dataset class, opener, array dataset)."""
        import importlib

        return getattr(importlib.import_module(self._data_module), name)

    def _open(self, spec):
        return self._data(self._opener)(spec)

    def _dataset(self, X, y=None):
        """A dataset (returned as is), a spec string, or (images, targets) lists -> a dataset of pairs."""
        what, targets = self._data_noun
        if isinstance(X, (self._data(self._dataset_class), self._arrays_dataset)):
            if y is not None:
                raise DataError(f"y must be None when X is a {what} (its {targets} are the targets)")
            return X
        if isinstance(X, str):
            return self._open(X)
        if y is None:
            raise DataError(f"got X of type {type(X).__name__} without {targets} y; pass a {what}, "
                            f"(images, {targets}) lists, or a feature cache with its dataset as y")
        return self._arrays(list(X), list(y))

    def _images(self, X):
        if isinstance(X, str) and X.startswith("sample:"):
            X = self._open(X)
        if isinstance(X, self._data(self._dataset_class)):
            return (X.load(i) for i in range(len(X)))  # lazily: a dataset may not fit in memory
        if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.ndim == 4 and X.dtype == np.uint8):
            return list(X)
        return [X]

    def predict(self, X, size=None):
        """Per-pixel predictions (segmentation: int64 labels; depth: float32 metres). Images / a dataset -> a list
        of [H, W] arrays at the original sizes; a feature array [N, C, h, w] -> an array [N, H, W] (``size`` or
        16h x 16w)."""
        if _is_feature_array(X):
            return self._predict_arrays(X, size)
        return [self._predict_image(im) for im in self._images(X)]

    def evaluate(self, X, y=None, progress_bar: bool | None = None, **metric_options) -> dict:
        """Metrics of this head on ``X``: a dataset (original images; ``y`` None), a feature cache (``y`` = its
        dataset; targets under the cache transform) or a feature array (``y`` targets). Dataset items that
        cannot be used (unreadable, no valid target) are listed under "failures" and left out; all of them
        failing is an error. ``progress_bar``: tqdm over the images (default: ``verbose``); ``metric_options``
        go to the subclass's metric (segmentation: ``reduce_zero_label``)."""
        self._check_fitted()
        if _is_cache(X) or _is_feature_array(X):
            feats, targets, _, _ = self._cached_set(X, y, 1, "cpu")
            metric, extra = self._new_metric(None, **metric_options)
            for i in range(0, len(feats), 64):
                t = targets[i:i + 64]
                metric.update(self._predict_arrays(feats[i:i + 64], tuple(t.shape[-2:])), t.numpy())
            return {**metric.compute(), **extra}
        ds = self._dataset(X, y)
        metric, extra = self._new_metric(ds, **metric_options)
        failures = []
        show = self.verbose if progress_bar is None else progress_bar
        for i in progress(range(len(ds)), len(ds), f"evaluating {self._kind}", show):
            try:
                img, target = ds.load_pair(i)
                self._check_target(target)
            except DataError as e:
                failures.append({"item": _item_name(ds, i), "error": str(e)})
                continue
            metric.update(self._predict_image(img), target)
        if failures and len(failures) == len(ds):
            raise DataError(f"no usable item among the {len(ds)} evaluated; the first: {failures[0]['item']}: "
                            f"{failures[0]['error']}")
        return {**metric.compute(), **extra, "failures": failures}

    def _check_target(self, target) -> None:
        """Subclass hook: DataError for a target that cannot be evaluated."""

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        self._check_fitted()
        params = {k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in self.get_params(deep=False).items() if k != "encoder"}
        return {"kind": self._kind, "params": params, "in_channels": self.in_channels_, "mode": self.mode_,
                "encoder": self.encoder_spec_, "n_iter": self.n_iter_, "numerics": self._numerics().record(),
                **self._config_extra()}

    def save(self, path):
        """Write safetensors weights + JSON config (``path`` and ``path`` with .json)."""
        from ..checkpoints import save_safetensors

        self._check_fitted()
        return save_safetensors(path, self.module_.state_dict(), self.config())

    @classmethod
    def load(cls, path, encoder=None, device="cpu"):
        """Read a head written by :meth:`save`; ``encoder`` is needed to predict from images."""
        from ..checkpoints import load_file, load_strict, read_safetensors_config
        from ..errors import CheckpointError

        cfg = read_safetensors_config(path)
        if not cfg or cfg.get("kind") != cls._kind:
            raise CheckpointError(f"{path}: not a {cls._kind} checkpoint (no svgfeat {cls._kind} config)")
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        params = {k: (tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v)
                  for k, v in cfg["params"].items()}
        params.setdefault("precision", (cfg.get("numerics") or {}).get("precision", "fp32"))  # older: fp32
        head = cls(encoder=encoder, **dict(params, device=device))
        head.in_channels_, head.mode_, head.encoder_spec_ = int(cfg["in_channels"]), cfg["mode"], cfg["encoder"]
        head.n_iter_, head.history_ = int(cfg.get("n_iter", 0)), []
        k = head._load_extra(cfg)
        head.module_ = head._new_module(head.in_channels_, k)
        load_strict(head.module_, load_file(path), cls._kind, str(path))
        head.module_.eval()
        return head


def _item_name(ds, i: int) -> str:
    paths = getattr(ds, "paths", None)
    return str(paths[i]) if paths is not None else f"item {i}"
