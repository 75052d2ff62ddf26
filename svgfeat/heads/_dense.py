"""Machinery shared by the dense (per-pixel) linear heads: segmentation and depth.

lr schedule, input-kind checks, logit upsampling, mmseg's sliding-window inference, and the epoch-free
online loader of augmented (image, target) crops (``ds.load_pair(i)`` + ``aug(img, target, rng)``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ._base import is_cache as _is_cache  # noqa: F401  (one home for the cache check)


def lr_factor(it: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warm-up, then cosine (to 0) or poly(0.9)."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    t = (it - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return (1 - min(t, 1.0)) ** 0.9


def _is_feature_array(x) -> bool:
    """A float tensor / array [N, C, h, w] (dense features), as opposed to images."""
    if torch.is_tensor(x):
        return x.ndim == 4 and x.is_floating_point()
    return isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype.kind == "f"


def _upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return logits if tuple(logits.shape[-2:]) == tuple(size) else F.interpolate(
        logits, size=tuple(size), mode="bilinear", align_corners=False)



def slide_inference(window_fn, x: torch.Tensor, crop, stride, num_classes: int) -> torch.Tensor:
    """mmseg's sliding window: x [1, 3, H, W] -> averaged logits [1, K, H, W].

    Windows of ``crop`` (an int or (h, w); clipped to the image) every ``stride`` (int or (h, w)) pixels, the
    last one flush with the border; ``window_fn(x_crop [1, 3, h, w]) -> [1, K, h, w]``. A crop that covers
    the image is one window.
    """
    H, W = x.shape[-2:]
    ch, cw = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
    sh, sw = (stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[1]))
    gh = max(H - ch + sh - 1, 0) // sh + 1
    gw = max(W - cw + sw - 1, 0) // sw + 1
    out = None
    count = torch.zeros(1, 1, H, W)
    for i in range(gh):
        for j in range(gw):
            y2, x2 = min(i * sh + ch, H), min(j * sw + cw, W)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            lg = window_fn(x[..., y1:y2, x1:x2]).cpu()
            if out is None:
                out = torch.zeros(1, lg.shape[1], H, W)
            out[..., y1:y2, x1:x2] += lg
            count[..., y1:y2, x1:x2] += 1
    return out / count


def _encoder_spec(enc) -> dict:
    """The fields a feature cache records about its encoder."""
    from ..extraction import encoder_spec

    return encoder_spec(enc)


class _Pairs(torch.utils.data.Dataset):
    """Index k of an epoch-free stream -> one augmented pair (image k % n of a seeded permutation)."""

    def __init__(self, ds, aug, order: np.ndarray, seed: int):
        self.ds, self.aug, self.order, self.seed = ds, aug, order, seed

    def __len__(self):
        return len(self.order)

    def __getitem__(self, k):
        img, mask = self.ds.load_pair(int(self.order[k]))
        return self.aug(img, mask, np.random.default_rng((self.seed, k)))


def _online_loader(ds, aug, batch_size: int, iters: int, seed: int, workers: int):
    """DataLoader of ``iters`` batches of augmented crops: x float32 [B, 3, c, c], masks int64 [B, c, c]."""
    n = len(ds)
    if n == 0:
        raise DataError("the training dataset is empty")
    rng = np.random.default_rng(seed)
    need = iters * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])[:need]
    pairs = _Pairs(ds, aug, order, seed)
    return torch.utils.data.DataLoader(
        pairs, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False,
        collate_fn=_collate, persistent_workers=False)


def _collate(batch):
    return torch.stack([t[0] for t in batch]), torch.as_tensor(np.stack([t[1] for t in batch]))


class DenseHeadMixin:
    """What the dense linear heads (segmentation, depth) share: progress lines, the fitted check and saving.
    Needs ``verbose``, ``max_iters``, ``history_``, ``module_`` and ``config()``."""

    def _log(self, it: int, t0: float) -> None:
        if self.verbose and (it % max(1, int(self.max_iters) // 20) == 0 or it + 1 == int(self.max_iters)):
            print(f"  iter {it + 1}/{self.max_iters}  loss {self.history_[-1]:.4f}  ({time.time() - t0:.1f}s)")

    def _check_fitted(self):
        if not hasattr(self, "module_"):
            name = type(self).__name__
            raise ConfigError(f"this {name} is not fitted; call fit() or {name}.load()")

    def save(self, path):
        """Write safetensors weights + JSON config (``path`` and ``path`` with .json)."""
        from ..checkpoints import save_safetensors

        return save_safetensors(path, self.module_.state_dict(), self.config())
