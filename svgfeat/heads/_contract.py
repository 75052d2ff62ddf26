"""scikit-learn's estimator contract for the classification heads (LinearProbe, KNNClassifier, LogRegSweep).

One home for what every classifier checks about its input:

- :func:`fit_input` / :func:`predict_input` turn X (and y) into a :class:`~._features.FeatureMatrix`. Array-likes
  (numpy arrays, plain lists, anything with ``__array__``) go through scikit-learn's ``check_X_y`` /
  ``check_array``: 2-D, numeric, finite, not complex, not sparse, not empty, X and y of one length, a column y
  warned about. Torch tensors (kept on their device, never copied) and feature caches / SVGFeatures / group
  dicts get the same checks here. ``fit_input`` also refuses a continuous y (``check_classification_targets``);
  ``predict_input`` raises ``NotFittedError`` before fit and a ``ValueError`` when the width differs from fit.
- Any label set works (negative integers, strings). Only labels read from a feature cache (X a cache, y not
  given) use -1 for "unlabelled": :func:`labels_from_cache` tells the heads when that rule applies.
- :class:`ScoreMixin` gives the scikit-learn ``score``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ._base import is_cache
from ._features import DEFAULT_SPEC, FeatureMatrix, aligned_labels, feature_matrix

FINITE_CHUNK = 65536  # rows per block of the fallback finite check of a tensor


def labels_from_cache(X, y) -> bool:
    """True when the labels come from a feature cache (where -1 marks an unlabelled row)."""
    return y is None and is_cache(X)


def _is_structured(X) -> bool:
    """Feature caches, SVGFeatures and {group: array} dicts: inputs resolved through a feature spec."""
    from scipy.sparse import issparse

    if issparse(X):  # scipy's dok format is a dict: sparse input goes to check_array, which refuses it
        return False
    return is_cache(X) or isinstance(X, dict) or (hasattr(X, "group") and hasattr(X, "layers"))


def _check_tensor(X: torch.Tensor) -> None:
    if X.ndim != 2:
        raise ConfigError(f"Expected a 2D feature matrix [n, D], got a tensor of shape {tuple(X.shape)}. "
                          "Reshape your data, or pool spatial features first")
    if X.is_complex():
        raise ConfigError("Complex data not supported: expected real-valued features")
    if len(X) == 0:
        raise ConfigError(f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a minimum of 1 is required")
    if X.shape[1] == 0:
        raise ConfigError(f"Found array with 0 feature(s) (shape={tuple(X.shape)}) while a minimum of 1 is required")


def check_finite(X, what: str = "X") -> None:
    """ValueError when X [n, D] (numpy or tensor) holds NaN or infinity. One float64 sum (no copy of X);
    only when the sum is not finite are the rows scanned in blocks (a sum can also overflow)."""
    if isinstance(X, torch.Tensor):
        if not X.dtype.is_floating_point or bool(torch.isfinite(X.sum(dtype=torch.float64))):
            return
        bad = any(not bool(torch.isfinite(X[a:a + FINITE_CHUNK]).all()) for a in range(0, len(X), FINITE_CHUNK))
    else:
        if not np.issubdtype(X.dtype, np.floating) or np.isfinite(X.sum(dtype=np.float64)):
            return
        bad = any(not np.isfinite(X[a:a + FINITE_CHUNK]).all() for a in range(0, len(X), FINITE_CHUNK))
    if bad:
        raise ConfigError(f"Input {what} contains NaN or infinity; every feature must be finite")


def _array_input(est, X, y, fit: bool):
    """(X, y) of an array-like input through scikit-learn's validation (floats kept, integers -> float32)."""
    from sklearn.utils import check_array, check_X_y

    dtypes = [np.float32, np.float64, np.float16]
    if y is None:
        if fit:
            raise ConfigError(f"{type(est).__name__} requires y to be passed, but the target y is None "
                              "(pass labels y, or a labelled feature cache as X)")
        return check_array(X, dtype=dtypes), None
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return check_X_y(X, y, dtype=dtypes)


def fit_input(est, X, y=None, *, features: str | None = DEFAULT_SPEC, sample_ids=None, view_ids=None,
              progress: bool = False) -> FeatureMatrix:
    """Validated training input of a classifier: a FeatureMatrix with labels (classification targets)."""
    from sklearn.utils.multiclass import check_classification_targets

    if _is_structured(X) or isinstance(X, torch.Tensor):
        if isinstance(X, torch.Tensor):
            _check_tensor(X)
        fm = feature_matrix(X, y, features=features, sample_ids=sample_ids, view_ids=view_ids, progress=progress)
        if fm.y is None:
            raise ConfigError(f"{type(est).__name__} requires y to be passed, but the target y is None "
                              "(and the cache has no labels)")
        if not is_cache(X):
            from sklearn.utils import check_consistent_length, column_or_1d

            fm.y = column_or_1d(fm.y, warn=True)
            check_consistent_length(fm.X, fm.y)
            if fm.y.dtype.kind in "fc" and not np.isfinite(fm.y).all():
                raise ConfigError("Input y contains NaN or infinity")
    else:
        Xa, ya = _array_input(est, X, y, fit=True)
        fm = feature_matrix(Xa, ya, features=features, sample_ids=sample_ids, view_ids=view_ids)
    check_finite(fm.X)
    check_classification_targets(fm.y)
    return fm


def predict_input(est, X, y=None, *, progress: bool = False, rows=None) -> FeatureMatrix:
    """Validated query input of a fitted classifier (NotFittedError before fit; ValueError when the feature
    width differs from fit). Cache labels are aligned to the training classes by name when y is not given."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    if _is_structured(X) or isinstance(X, torch.Tensor):
        if isinstance(X, torch.Tensor):
            _check_tensor(X)
        if y is None and is_cache(X) and getattr(est, "class_names_", None):
            y = aligned_labels(est.class_names_, X)
        fm = feature_matrix(X, y, features=est.features, rows=rows, progress=progress)
    else:
        Xa, ya = _array_input(est, X, y, fit=False)
        fm = feature_matrix(Xa, ya, features=est.features, rows=rows)
    check_features(est, fm.X)
    return fm


def check_features(est, X):
    """X [n, D] of a fitted estimator: finite and of the fitted width (ValueError otherwise); returns X."""
    check_finite(X)
    if X.shape[1] != est.n_features_in_:
        raise ConfigError(f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
                          f"{est.n_features_in_} features as input (feature spec {est.features!r})")
    return X


class ScoreMixin:
    """``score(X, y=None, sample_weight=None)``: top-1 accuracy in [0, 1] of ``predict`` against y, or against
    the cache's labels (matched to the training classes by name; unlabelled rows skipped) when X is a cache."""

    def score(self, X, y=None, sample_weight=None) -> float:
        from sklearn.metrics import accuracy_score

        fm = predict_input(self, X, y)
        if fm.y is None:
            raise ConfigError(f"{type(self).__name__}.score needs labels: pass y or a labelled cache")
        Xf, yf = fm.X, fm.y
        if labels_from_cache(X, y) and np.issubdtype(yf.dtype, np.integer) and (yf == -1).any():
            keep = np.flatnonzero(yf != -1)
            Xf, yf = Xf[keep], yf[keep]
            sample_weight = None if sample_weight is None else np.asarray(sample_weight)[keep]
        return float(accuracy_score(yf, self.predict(Xf), sample_weight=sample_weight))
