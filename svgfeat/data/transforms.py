"""Image -> model-input transforms (presets) and :func:`preprocess`.

Presets (``size`` S must be a multiple of 16):
- ``svg``: ADM ``center_crop_arr`` (BOX-halve while short side >= 2S, bicubic resize of the short side
  to S, centre crop S x S) -- the official SVG pipeline.
- ``center-crop``: bicubic resize of the short side to round(S / crop_pct), centre crop S (DINOv3 eval,
  crop_pct 0.875 -> 256 -> 224).
- ``resize``: bicubic resize to S x S (no crop; keeps the whole image, distorts aspect).
- ``none``: no resizing (the image sides must already be multiples of 16).
- ``rrc``: random-resized crop (area ``scale`` 0.08-1 of the image, aspect ``ratio`` 3/4-4/3, torchvision's
  10-try algorithm with its centre-crop fallback), bicubic resize to S x S, horizontal flip with p 0.5 --
  DINOv3's linear-probe train transform (``make_classification_train_transform``). Random: it runs only
  through :func:`svgfeat.data.views.make_view`, which seeds it per (seed, item, view).
Named DINOv3 shapes: ``resize256_crop224`` = ``Transform("center-crop", 224)`` (256 -> centre 224, the
eval transform) and ``rrc224`` = ``Transform("rrc", 224)`` (the train views); see :data:`NAMED`.
All presets normalise with the ImageNet mean/std to a float32 tensor [3, S, S].
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .decode import load_image, to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("svg", "center-crop", "resize", "none", "rrc")
RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop defaults, used by DINOv3's probe train transform
RRC_RATIO = (3 / 4, 4 / 3)


def center_crop_arr(img: Image.Image, size: int) -> Image.Image:
    """ADM-style centre crop: repeated BOX halving, bicubic resize of the short side, centre crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def resize_center_crop(img: Image.Image, size: int, crop_pct: float) -> Image.Image:
    short = int(math.floor(size / crop_pct))
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample=Image.BICUBIC)
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def rrc_box(w: int, h: int, rng: random.Random, scale=RRC_SCALE, ratio=RRC_RATIO):
    """Crop box (left, top, right, bottom) of a random-resized crop of a w x h image.

    torchvision's ``RandomResizedCrop.get_params``: 10 tries of (area fraction ~ U(scale), log-aspect ~
    U(log ratio)); when none fits, the largest centred crop with the aspect clamped to ``ratio``.
    """
    area = w * h
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*lr))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        cw, ch = int(round(h * max(ratio))), h
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def normalize(arr: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] ImageNet-normalised."""
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] normalised -> [0, 1] floats."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return x * std + mean


@dataclass(frozen=True)
class Transform:
    """A picklable image transform; ``spec()`` is what the cache manifest records."""

    preset: str = "svg"
    size: int = 256
    crop_pct: float = 0.875
    hflip: bool = False
    scale: tuple = RRC_SCALE  # rrc only
    ratio: tuple = RRC_RATIO  # rrc only

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {PRESETS}")
        if self.preset != "none" and (self.size <= 0 or self.size % 16):
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")

    def spec(self) -> dict:
        """What a cache manifest records: every field that changes pixels (rrc adds its crop law)."""
        d = asdict(self)
        scale, ratio = d.pop("scale"), d.pop("ratio")
        if self.preset == "rrc":
            d.update(scale=list(scale), ratio=list(ratio), interpolation="bicubic", flip_p=0.5,
                     seeding="per (view_seed, item, view)")
        d["mean"], d["std"] = list(IMAGENET_MEAN), list(IMAGENET_STD)
        return d

    def to_pil(self, img: Image.Image, rng: random.Random | None = None) -> Image.Image:
        """The transformed PIL image; ``rng`` (a seeded random.Random) is required by preset ``rrc``."""
        img = to_rgb(img)
        if self.preset == "rrc":
            if rng is None:
                raise TypeError("preset 'rrc' is random: build views with svgfeat.data.views.make_view "
                                "(seeded per item and view), not by calling the transform directly")
            img = img.crop(rrc_box(*img.size, rng, self.scale, self.ratio))
            img = img.resize((self.size, self.size), resample=Image.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        elif self.preset == "svg":
            img = center_crop_arr(img, self.size)
        elif self.preset == "center-crop":
            img = resize_center_crop(img, self.size, self.crop_pct)
        elif self.preset == "resize":
            img = img.resize((self.size, self.size), resample=Image.BICUBIC)
        elif img.size[0] % 16 or img.size[1] % 16:
            raise ValueError(f"preset 'none' needs sides that are multiples of 16, got {img.size}")
        if self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """PIL image -> float32 [3, S, S]."""
        return normalize(np.asarray(self.to_pil(img, rng)))


# DINOv3's probe transforms by name (eval: resize 256 -> centre crop 224; train: random-resized crop 224 + flip)
NAMED = {"resize256_crop224": Transform("center-crop", 224, crop_pct=0.875),
         "rrc224": Transform("rrc", 224)}


def _as_pil(x) -> Image.Image:
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (str, Path)):
        return load_image(x)
    if torch.is_tensor(x):
        x = x.cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 HWC (or HW), got dtype {x.dtype}")
        if x.ndim == 2:
            return Image.fromarray(x, "L")
        if x.ndim == 3 and x.shape[2] in (3, 4):
            return Image.fromarray(x)
        raise ValueError(f"numpy image must be HxW or HxWx3/4, got shape {x.shape}")
    raise TypeError(f"cannot interpret {type(x).__name__} as an image; expected a path, PIL image or uint8 array")


def preprocess(images, preset: str = "svg", size: int = 256, crop_pct: float = 0.875) -> torch.Tensor:
    """Images -> normalised float32 [B, 3, S, S].

    ``images``: a path, PIL image, uint8 array [H,W,3] / [B,H,W,3] / uint8 tensor of those, or a list.
    """
    t = Transform(preset, size, crop_pct)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif torch.is_tensor(images) and images.ndim == 4:
        images = list(images.cpu().numpy())
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("preprocess() got no images")
    return torch.stack([t(_as_pil(im)) for im in images])
