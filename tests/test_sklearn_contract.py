"""scikit-learn's estimator contract for the classification heads (issue P point 6).

Every check of ``sklearn.utils.estimator_checks`` runs on KNNClassifier, LinearProbe (a light configuration:
fewer heads and steps, the same code paths) and LogRegSweep (a shorter C grid); plus the bugs the review found,
each seen from the user's side.
"""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from svgfeat.errors import ConfigError, DataError
from svgfeat.heads.knn import KNNClassifier
from svgfeat.heads.logreg import LogRegSweep
from svgfeat.heads.probe import LinearProbe

ESTIMATORS = [
    KNNClassifier(),
    LinearProbe(lrs=(0.01, 0.1), iterations=300),
    LogRegSweep(Cs=(0.01, 1.0, 100.0)),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def separable(labels, n_per=40, seed=0):
    """Two well separated blobs in 6-D labelled with ``labels`` (any values)."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(-2, 0.5, (n_per, 6)), rng.normal(2, 0.5, (n_per, 6))]).astype(np.float32)
    y = np.repeat(np.asarray(labels, dtype=object if isinstance(labels[0], str) else None), n_per)
    return X, y


def light(cls):
    return {KNNClassifier: lambda: KNNClassifier(k=(5,)),
            LinearProbe: lambda: LinearProbe(lrs=(0.1,), iterations=100),
            LogRegSweep: lambda: LogRegSweep(Cs=(1.0,))}[cls]()


def test_input_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


@pytest.mark.parametrize("cls", [KNNClassifier, LinearProbe, LogRegSweep])
@pytest.mark.parametrize("labels", [(-1, 1), ("neg", "pos"), (-7, -3)])
def test_any_label_set(cls, labels):
    """{-1, +1} keeps both classes (kNN used to drop -1 and score 0.46; the probe refused it)."""
    X, y = separable(labels)
    est = light(cls).fit(X, y)
    assert list(est.classes_) == sorted(labels)
    assert est.score(X, y) == 1.0
    assert set(est.predict(X)) == set(labels)


@pytest.mark.parametrize("cls", [LinearProbe, LogRegSweep])
def test_binary_decision_function_is_1d(cls):
    X, y = separable((3, 5))
    est = light(cls).fit(X, y)
    d = est.decision_function(X)
    assert d.shape == (len(X),)
    np.testing.assert_array_equal(np.where(d > 0, 5, 3), est.predict(X))


@pytest.mark.parametrize("cls", [KNNClassifier, LinearProbe, LogRegSweep])
def test_predict_has_no_side_effects(cls):
    X, y = separable((0, 1))
    est = light(cls).fit(X, y)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(est).items()}
    est.predict(X)
    est.predict_proba(X)
    assert set(vars(est)) == set(before)
    for k, v in vars(est).items():
        assert v is before[k] or (isinstance(v, np.ndarray) and np.array_equal(v, before[k])), k


@pytest.mark.parametrize("cls", [KNNClassifier, LinearProbe, LogRegSweep])
def test_refuses_bad_input(cls):
    X, y = separable((0, 1))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        light(cls).fit(bad, y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        light(cls).fit(bad, y)
    with pytest.raises(ValueError, match="NaN"):  # torch tensors: the same check (kept on their device)
        light(cls).fit(torch.from_numpy(np.where(np.isinf(bad), np.nan, bad)), y)
    with pytest.raises(ValueError, match="[Cc]omplex"):
        light(cls).fit(X.astype(np.complex64), y)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        light(cls).fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="requires y to be passed"):
        light(cls).fit(X, None)
    with pytest.raises(NotFittedError):
        light(cls).predict(X)
    est = light(cls).fit(X.tolist(), y.tolist())  # plain lists are accepted
    assert est.n_features_in_ == 6 and est.score(X, y) == 1.0
