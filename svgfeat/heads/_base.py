"""What every head shares: the one ``is_cache`` test and the one ``score``.

- :class:`CacheLike` is the structural protocol of a feature cache (:class:`svgfeat.cache.FeatureCache`
  and anything shaped like it: a manifest, per-group arrays, labels and batched reads);
  :func:`is_cache` is the single check used by every head, retrieval and segmentation path.
- :class:`ScoreMixin` gives a classifier the scikit-learn ``score``: top-1 accuracy in [0, 1] of
  ``predict`` against y (or the cache's labels, matched to the training classes by name when the
  estimator was fitted on a cache), with optional sample weights.
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


class ScoreMixin:
    """``score(X, y=None, sample_weight=None)`` for estimators with ``features`` and ``predict``."""

    def _score_labels(self, X, y):
        """(features or X, labels) for scoring; cache labels are aligned to the fitted classes by name."""
        from ..errors import ConfigError
        from ._features import aligned_labels, feature_matrix

        if y is None and is_cache(X) and getattr(self, "class_names_", None):
            y = aligned_labels(self.class_names_, X)
        fm = feature_matrix(X, y, features=self.features)
        if fm.y is None:
            raise ConfigError(f"{type(self).__name__}.score needs labels: pass y or a labelled cache")
        return fm.X, fm.y

    def score(self, X, y=None, sample_weight=None) -> float:
        """Top-1 accuracy in [0, 1] of ``predict`` (y defaults to the cache labels)."""
        from sklearn.metrics import accuracy_score

        Xf, yf = self._score_labels(X, y)
        return float(accuracy_score(yf, self.predict(Xf), sample_weight=sample_weight))
