"""LogRegSweep: L-BFGS logistic regression over a C grid, selected on held-out train, refit."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

import svgfeat
from svgfeat.errors import ConfigError
from svgfeat.heads.logreg import DINO_CS, LogRegSweep


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, va = perm[:1400], perm[1400:]
    return X[tr], y[tr], X[va], y[va]


def test_lazy_export_and_dino_grid():
    assert svgfeat.LogRegSweep is LogRegSweep
    assert len(DINO_CS) == 45 and DINO_CS[0] == pytest.approx(1e-6) and DINO_CS[-1] == pytest.approx(1e5)


def test_separable_toy_reaches_100_percent():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 10
    y = np.repeat(np.arange(3), 30)
    X = (centers[y] + rng.normal(size=(90, 5))).astype(np.float32)
    m = LogRegSweep(Cs=[0.01, 1.0, 100.0]).fit(X, y, X_val=X[::2], y_val=y[::2])
    assert m.report()["best"]["top1"] == 100.0
    assert m.score(X, y) == 1.0


def test_sweep_selects_on_heldout_and_refits(digits):
    X, y, Xv, yv = digits
    Cs = [1e-4, 1e-2, 1.0, 100.0]
    m = LogRegSweep(Cs=Cs).fit(X, y, X_val=Xv, y_val=yv)
    assert [r["C"] for r in m.scores_] == Cs
    assert m.best_C_ == Cs[int(np.argmax([r["heldout_top1"] for r in m.scores_]))]
    assert m.best_C_ >= 1e-2  # tiny C underfits the digits
    rep = m.report()
    assert rep["selection"] == "heldout" and rep["best"]["refit"] and rep["best"]["split"] == "val"
    assert rep["best"]["top1"] > 93 and rep["best"]["top1"] == pytest.approx(100 * m.score(Xv, yv))
    assert m.estimator_.coef_.shape == (10, 64)
    assert len(m.heldout_rows_) == 140 and set(np.bincount(y[m.heldout_rows_])) <= {13, 14, 15}  # stratified
    # selection never used val: scrambled val labels give the same C
    m2 = clone(m).fit(X, y, X_val=Xv, y_val=np.roll(yv, 5))
    assert m2.best_C_ == m.best_C_
    assert m.predict_proba(Xv).shape == (len(yv), 10)


def test_select_on_val_is_labelled(digits):
    X, y, Xv, yv = digits
    with pytest.raises(ConfigError, match="needs validation data"):
        LogRegSweep(select_on="val").fit(X, y)
    m = LogRegSweep(Cs=[1e-3, 1.0], select_on="val", standardize=True).fit(X, y, X_val=Xv, y_val=yv)
    rep = m.report()
    assert rep["selection"] == "val" and "ON VAL" in rep["note"] and not rep["best"]["refit"]
    assert rep["best"]["top1"] == pytest.approx(max(r["val_top1"] for r in m.scores_))


def test_contract_errors():
    with pytest.raises(NotFittedError):
        LogRegSweep().predict(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="Cs must be positive"):
        LogRegSweep(Cs=[0.0]).fit(np.zeros((10, 2)), [0, 1] * 5)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        LogRegSweep(Cs=[1.0]).fit(np.zeros((10, 2)), [0] * 10)
