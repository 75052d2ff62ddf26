"""Deterministic image stream for AE training: crops, data order and per-step random draws.

Everything random is a pure function of (seed, step), so a resumed run and a run split over N ranks see
exactly the samples of an uninterrupted single-process run:

- data order: an endless stream made of one seeded permutation of the dataset per epoch; the global
  batch of ``step`` is stream items [step * B, (step + 1) * B); rank r of W takes the contiguous slice
  [r * B / W, (r + 1) * B / W) (:class:`StreamBatchSampler`);
- crops: each stream item carries its own seed (from (seed, stream position)), so the random crop does
  not depend on DataLoader workers or on the rank;
- per-step draws (residual masking, RoPE rescale): :func:`step_generator` (seed, step).

Images follow the official taming pipeline: short side resized to ``size`` (bilinear; PIL antialiases
large downscales, cv2 does not), then a random (train) or centre (eval) ``size`` crop, no flip. The
loader yields uint8 [B, 3, S, S]; :func:`to_model_inputs` gives pixels in [-1, 1] for the losses and
ImageNet-normalised inputs for the encoder.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError, DataError

CACHE_BYTES = 512 << 20  # resized images kept in memory (per process/worker) up to this many bytes


def _mix(*ints: int) -> int:
    """A 63-bit seed hashed from non-negative integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(i) for i in ints]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def step_generator(seed: int, step: int, stream: int = 0, device="cpu") -> torch.Generator:
    """torch.Generator for the random draws of training step ``step`` (same on every rank)."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix(seed, step, 1000 + stream))
    return g


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
    return img if (nw, nh) == (w, h) else img.resize((nw, nh), resample=Image.BILINEAR)


class AECropDataset(torch.utils.data.Dataset):
    """Dataset item ``(index, crop_seed)`` -> uint8 tensor [3, S, S]; crop_seed None = centre crop."""

    def __init__(self, dataset, size: int, cache_bytes: int = CACHE_BYTES):
        if size <= 0 or size % 16:
            raise ConfigError(f"size must be a positive multiple of 16, got {size}")
        if len(dataset) == 0:
            raise DataError("the training dataset is empty")
        self.dataset, self.size, self.cache_bytes = dataset, int(size), int(cache_bytes)
        self._cache: dict[int, np.ndarray] = {}
        self._cached = 0
        self._warned = False

    def __len__(self) -> int:
        return len(self.dataset)

    def _resized(self, i: int) -> np.ndarray:
        a = self._cache.get(i)
        if a is not None:
            return a
        from ..data.decode import DecodeError

        n = len(self.dataset)
        for k in range(min(n, 16)):
            j = (i + k) % n
            try:
                img = self.dataset.load(j)
                break
            except DecodeError as e:
                if not self._warned:
                    warnings.warn(f"skipping unreadable training images (first: {e}); using the next ones",
                                  stacklevel=2)
                    self._warned = True
        else:
            raise DataError(f"16 consecutive training images from index {i} could not be decoded")
        a = np.asarray(resize_short_side(img.convert("RGB"), self.size), dtype=np.uint8)
        if self._cached + a.nbytes <= self.cache_bytes:
            self._cache[i] = a
            self._cached += a.nbytes
        return a

    def __getitem__(self, item) -> torch.Tensor:
        i, crop_seed = item
        a = self._resized(int(i))
        h, w = a.shape[:2]
        S = self.size
        if crop_seed is None:
            top, left = (h - S) // 2, (w - S) // 2
        else:
            rng = np.random.default_rng(int(crop_seed))
            top, left = int(rng.integers(0, h - S + 1)), int(rng.integers(0, w - S + 1))
        crop = a[top:top + S, left:left + S].copy()  # writable, contiguous
        return torch.from_numpy(crop).permute(2, 0, 1).contiguous()


class StreamBatchSampler:
    """Yields, for steps ``start_step, start_step + 1, ...``, this rank's list of (index, crop_seed)."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0,
                 steps: int | None = None):
        if global_batch % world:
            raise ConfigError(f"the global batch size {global_batch} is not divisible by the world size {world}")
        self.n, self.B, self.seed, self.rank, self.world = int(n), int(global_batch), int(seed), rank, world
        self.start_step, self.steps = int(start_step), steps
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(_mix(self.seed, epoch, 7)).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def global_items(self, step: int) -> list[tuple[int, int]]:
        """The (dataset index, crop seed) pairs of the whole global batch of ``step``."""
        out = []
        for k in range(step * self.B, (step + 1) * self.B):
            out.append((int(self._perm_for(k // self.n)[k % self.n]), _mix(self.seed, k, 11)))
        return out

    def rank_slice(self) -> tuple[int, int]:
        b = self.B // self.world
        return self.rank * b, (self.rank + 1) * b

    def __iter__(self):
        lo, hi = self.rank_slice()
        step = self.start_step
        while self.steps is None or step < self.start_step + self.steps:
            yield self.global_items(step)[lo:hi]
            step += 1


def make_loader(dataset: AECropDataset, sampler: StreamBatchSampler, workers: int = 0, pin_memory: bool = False):
    """DataLoader over the stream (uint8 batches [b, 3, S, S], b = global batch / world).

    It gets its own generator: creating the iterator must not draw from the global torch RNG, whose
    state (dropout) is restored on resume.
    """
    g = torch.Generator()
    g.manual_seed(_mix(sampler.seed, sampler.start_step, sampler.rank, 13))
    kw = dict(num_workers=workers, pin_memory=pin_memory, generator=g)
    if workers > 0:
        kw.update(persistent_workers=False, prefetch_factor=4)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **kw)


def to_model_inputs(u8: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B,3,S,S] -> (pixels in [-1, 1], ImageNet-normalised encoder input), float32 on ``device``."""
    x = u8.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x, ((x + 1.0) * 0.5 - mean) / std


def fixed_images(dataset: AECropDataset, n: int) -> torch.Tensor:
    """The first ``n`` images, centre-cropped: uint8 [n, 3, S, S] (for sample grids)."""
    n = min(n, len(dataset))
    return torch.stack([dataset[(i, None)] for i in range(n)])
