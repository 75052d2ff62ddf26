"""Embedded sample data that needs no download.

- ``sample:digits/train`` / ``sample:digits/val``: scikit-learn's 1797 real handwritten digits (8x8, 10
  classes), rendered as 32x32 RGB (white strokes on black), split 80/20 with a fixed seed.
- ``sample:photos``: scikit-image's bundled sample photographs (unlabelled).
- ``sample:depth/train`` / ``sample:depth/val``: rendered rooms with exact metric depth (``svgfeat.data.depth``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SAMPLE_SPLIT_SEED = 0
VAL_FRACTION = 0.2
PHOTO_NAMES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
               "retina", "coins", "horse", "moon", "page", "text", "brick", "grass", "gravel", "clock", "cell",
               "colorwheel", "logo", "motorcycle_left", "motorcycle_right")
SPECS = ("sample:digits/train", "sample:digits/val", "sample:photos", "sample:depth/train", "sample:depth/val")


def digits_split(split: str) -> np.ndarray:
    """Indices of the fixed seeded train/val split of sklearn's digits."""
    n = 1797
    perm = np.random.default_rng(SAMPLE_SPLIT_SEED).permutation(n)
    n_val = int(round(n * VAL_FRACTION))
    return np.sort(perm[:n_val] if split == "val" else perm[n_val:])


def digit_image(values_8x8: np.ndarray, size: int = 32) -> Image.Image:
    """sklearn digit (values 0..16) -> RGB PIL image ``size`` x ``size``."""
    a = np.clip(values_8x8 * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L").resize((size, size), Image.BICUBIC).convert("RGB")


def load_digits():
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    return d.images, d.target.astype(np.int64)


def photo(name: str) -> Image.Image:
    import skimage.data

    from .decode import to_rgb

    a = getattr(skimage.data, name)()
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64) / max(float(a.max()), 1.0), 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(a)
    return to_rgb(img)


def available_photos() -> list[str]:
    import skimage.data

    return [n for n in PHOTO_NAMES if hasattr(skimage.data, n)]
