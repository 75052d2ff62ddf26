"""Test fixtures shared by the DiT training tests and their torchrun worker (not a test module)."""

from __future__ import annotations

import numpy as np


class MemCache:
    """A tiny in-memory stand-in for the feature cache protocol used by ``train_dit``.

    ``latent`` rows [n, C, h, w] float16: a per-class pattern plus noise, so a DiT can learn something.
    """

    def __init__(self, n: int = 48, C: int = 8, h: int = 4, w: int = 4, classes: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n, dtype=np.int64) % classes
        self.labels[-2:] = -1  # two unlabelled rows -> null class
        proto = rng.normal(size=(classes, C, h, w)) * 2.0 + 0.5
        lat = proto[np.maximum(self.labels, 0)] + 0.3 * rng.normal(size=(n, C, h, w))
        self._lat = lat.astype(np.float16)
        self.manifest = {"views": 1}
        self.view_ids = np.zeros(n, dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def read(self, group, rows=None):
        assert group == "latent", group
        return self._lat if rows is None else self._lat[np.asarray(rows)]

    def latent_stats(self):
        x = self._lat.astype(np.float64)
        return {"mean": x.mean(axis=(0, 2, 3)), "std": x.std(axis=(0, 2, 3))}


def tiny_model(C: int = 8, seed: int = 0, **kw):
    import torch

    from svgfeat.models.dit import test_dit_tiny

    torch.manual_seed(seed)
    return test_dit_tiny(in_channels=C, input_size=4, num_classes=3, hidden_size=32, depth=2, num_heads=2, **kw)
