"""Helpers shared by the benchmarks: timing, peak RSS, synthetic JPEG folders of real photos."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def photo_folder(root, n: int, size=(500, 375), seed: int = 0) -> Path:
    """n JPEGs (ImageNet-like 500x375) cut from scikit-image's real sample photos at random offsets/scales."""
    import skimage.data
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    srcs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
            skimage.data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = Image.fromarray(srcs[i % len(srcs)]).convert("RGB")
        s = rng.uniform(0.6, 1.0)
        w, h = int(a.width * s), int(a.height * s)
        x, y = rng.integers(0, a.width - w + 1), rng.integers(0, a.height - h + 1)
        a.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC).save(root / f"img_{i:05d}.jpg", quality=90)
    return root
