"""Image -> model-input transforms (presets) and :func:`preprocess`.

Presets (``size`` S must be a multiple of 16):
- ``svg``: ADM ``center_crop_arr`` (BOX-halve while short side >= 2S, bicubic resize of the short side
  to S, centre crop S x S) -- the official SVG pipeline.
- ``center-crop``: bicubic resize of the short side to round(S / crop_pct), centre crop S (DINOv3 eval,
  crop_pct 0.875 -> 256 -> 224).
- ``resize``: bicubic resize to S x S (no crop; keeps the whole image, distorts aspect).
- ``none``: no resizing (the image sides must already be multiples of 16).
All presets normalise with the ImageNet mean/std to a float32 tensor [3, S, S].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .decode import load_image, to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("svg", "center-crop", "resize", "none")


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

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {PRESETS}")
        if self.preset != "none" and (self.size <= 0 or self.size % 16):
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")

    def spec(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(IMAGENET_MEAN), list(IMAGENET_STD)
        return d

    def to_pil(self, img: Image.Image) -> Image.Image:
        img = to_rgb(img)
        if self.preset == "svg":
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

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> float32 [3, S, S]."""
        return normalize(np.asarray(self.to_pil(img)))


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
