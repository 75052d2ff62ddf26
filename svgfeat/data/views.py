"""Deterministic augmented views for caches that hold K views per image.

Deterministic presets (svg, center-crop, resize, none): view 0 is the plain transform, view 1 its
horizontal flip, views >= 2 are random-resized crops (scale 0.35-1, ratio 3/4-4/3, random flip) of the
source image followed by the transform.
Preset ``rrc`` (DINOv3's probe train transform): *every* view, view 0 included, is its own
random-resized crop + flip.
Randomness is seeded by (seed, item, view) only, so reruns, resumes and ``torchrun`` slices produce
identical rows.
"""

from __future__ import annotations

import math
import random

from PIL import Image

from .transforms import Transform, rrc_box


def view_rng(seed: int, item: int, view: int) -> random.Random:
    """The generator of one view: a string seed (hashed with SHA-512 by ``random``), stable across
    processes and Python versions."""
    return random.Random(f"svgfeat-view:{int(seed)}:{int(item)}:{int(view)}")


def random_resized_crop(img: Image.Image, rng: random.Random, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random crop of ``img`` (not resized); the whole image when 10 tries do not fit."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.crop((x, y, x + cw, y + ch))
    return img


def make_view(img: Image.Image, transform: Transform, view: int, seed: int, item: int):
    """Tensor [3, S, S] of view ``view`` of ``img`` (``item``: the dataset index; ``seed``: the cache's
    view seed)."""
    if transform.preset == "rrc":
        return transform(img, view_rng(seed, item, view))
    if view == 0:
        return transform(img)
    if view == 1:
        return transform(img.transpose(Image.FLIP_LEFT_RIGHT))
    rng = random.Random(hash((seed, item, view)) & 0xFFFFFFFF)  # kept: existing multi-view caches stay valid
    crop = random_resized_crop(img, rng)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return transform(crop)


__all__ = ["make_view", "random_resized_crop", "rrc_box", "view_rng"]
