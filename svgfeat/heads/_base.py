"""What every head shares: the one ``is_cache`` test, the protocol constants and the progress bar.

- :class:`CacheLike` is the structural protocol of a feature cache (:class:`svgfeat.cache.FeatureCache`
  and anything shaped like it: a manifest, per-group arrays, labels and batched reads);
  :func:`is_cache` is the single check used by every head, retrieval and segmentation path.
- :func:`progress_bar`: tqdm for loops of more than one step.

This module imports nothing from the other head modules (the classifiers' ``score`` lives in
:mod:`svgfeat.heads._contract`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CacheLike(Protocol):
    """Structural type of a feature cache (attributes only; see :class:`svgfeat.cache.FeatureCache`)."""

    manifest: dict
    labels: np.ndarray

    def read(self, group, rows=None): ...

    def iter_batches(self, *args, **kwargs): ...


# DINOv3's linear-probe grid (eval/linear.py): base lrs, scaled by batch/256; kNN neighbour counts
DINOV3_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
DINOV3_KS = (10, 20, 100, 200)

_CACHE_ATTRS = ("manifest", "labels", "read", "iter_batches", "groups", "encoder_spec", "to")


def is_cache(obj) -> bool:
    """True for a feature cache (FeatureCache or a duck-typed equivalent), never for arrays/tensors."""
    return not isinstance(obj, (np.ndarray, list, tuple)) and all(hasattr(obj, a) for a in _CACHE_ATTRS)


def progress_bar(iterable, total: int, enabled: bool, **tqdm_kwargs):
    """``iterable`` wrapped in a tqdm bar when ``enabled`` and there is more than one step (a ``1/1`` bar says
    nothing), else returned as is."""
    if not enabled or total <= 1:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, **tqdm_kwargs)
