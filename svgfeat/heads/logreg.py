"""Logistic regression with a C sweep (DINOv2/v3 log-reg protocol for small datasets).

The protocol: L-BFGS multinomial logistic regression, regularisation C swept over a log-spaced grid
(DINO: 10 ** linspace(-6, 5, 45)), the best C chosen on a held-out split of train (by sample, stratified),
then the model refit on the full train set with that C. :class:`LogRegSweep` wraps scikit-learn's
``LogisticRegression`` and follows the estimator contract.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import ConfigError
from ._contract import ScoreMixin, fit_input, predict_input
from ._features import DEFAULT_SPEC, eval_rows, feature_matrix, to_numpy32
from .probe import heldout_split

DINO_CS = tuple(float(c) for c in 10.0 ** np.linspace(-6, 5, 45))


class LogRegSweep(ScoreMixin, ClassifierMixin, BaseEstimator):
    """Sweep C of an L-BFGS logistic regression, select on held-out train, refit on all of train.

    Parameters: Cs -- grid of C (default DINO's 45 values 1e-6 ... 1e5); features -- feature spec for
    caches / SVGFeatures; heldout_fraction -- share of train samples held out for selection;
    select_on -- "heldout" or "val" (needs X_val in fit; labelled in ``report``); refit -- refit the
    best C on the full train set; max_iter / tol -- L-BFGS limits; standardize -- z-score features
    (statistics of the fitting rows); random_state.

    Fitted: classes_, best_C_, best_index_, scores_ (list of dicts per C: C, heldout_top1/top5 and,
    when X_val is given to fit, val_top1/top5, percent), estimator_ (the refit sklearn model), coef_,
    intercept_, n_iter_ (L-BFGS iterations of estimator_), selection_. Any label values work (negative
    integers, strings); with two classes ``decision_function`` is 1-D, as in scikit-learn.
    """

    def __init__(self, Cs=None, features: str = DEFAULT_SPEC, heldout_fraction: float = 0.1,
                 select_on: str = "heldout", refit: bool = True, max_iter: int = 1000, tol: float = 1e-4,
                 standardize: bool = False, random_state: int = 0):
        self.Cs = Cs
        self.features = features
        self.heldout_fraction = heldout_fraction
        self.select_on = select_on
        self.refit = refit
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.random_state = random_state

    def _model(self, C: float):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        lr = LogisticRegression(C=C, solver="lbfgs", max_iter=int(self.max_iter), tol=float(self.tol))
        return make_pipeline(StandardScaler(), lr) if self.standardize else lr

    @staticmethod
    def _acc(model, X, y):
        p = model.predict_proba(X)
        classes = model.classes_
        top = classes[np.argsort(-p, axis=1, kind="stable")[:, :min(5, len(classes))]]
        return float((top[:, 0] == y).mean() * 100), float((top == y[:, None]).any(1).mean() * 100)

    def fit(self, X, y=None, *, X_val=None, y_val=None, sample_ids=None, view_ids=None):
        """Sweep C on X [n, D] / y [n] (or a cache), select, refit. X_val / y_val: optional val data."""
        Cs = DINO_CS if self.Cs is None else tuple(float(c) for c in np.atleast_1d(self.Cs))
        if not Cs or any(not c > 0 for c in Cs):
            raise ConfigError(f"Cs must be positive numbers, got {self.Cs!r}")
        if self.select_on not in ("heldout", "val"):
            raise ConfigError(f"select_on must be 'heldout' or 'val', got {self.select_on!r}")
        if self.select_on == "val" and X_val is None:
            raise ConfigError("select_on='val' needs validation data: fit(X, y, X_val=..., y_val=...)")
        fm = fit_input(self, X, y, features=self.features, sample_ids=sample_ids, view_ids=view_ids)
        Xn = to_numpy32(fm.X)
        classes = np.unique(fm.y)
        if len(classes) < 2:
            raise ConfigError(f"need at least 2 classes, got 1 class: {classes.tolist()}")
        self.classes_ = classes
        if X_val is not None:
            vm = feature_matrix(X_val, y_val, features=self.features)
            if vm.y is None:
                raise ConfigError("X_val needs labels: pass y_val or a labelled cache")
            vr = eval_rows(vm.sample_ids, vm.view_ids)
            Xv, yv = to_numpy32(vm.X)[vr], vm.y[vr]
        if self.select_on == "heldout":
            tr, ho = heldout_split(fm.sample_ids, fm.y, self.heldout_fraction, self.random_state)
            ho = ho[eval_rows(fm.sample_ids[ho], fm.view_ids[ho])]
        else:
            tr, ho = np.arange(len(fm.y)), np.zeros(0, np.int64)
        self.heldout_rows_ = ho
        self.scores_, models = [], []
        from threadpoolctl import threadpool_limits

        # small problems: one BLAS thread (L-BFGS iterations are tiny; extra threads only spin)
        limit = 1 if Xn.size * len(self.classes_) < 5e7 else None
        with warnings.catch_warnings(), threadpool_limits(limit):
            warnings.simplefilter("ignore")  # ConvergenceWarning at extreme C is expected in a sweep
            for C in Cs:
                m = self._model(C).fit(Xn[tr], fm.y[tr])
                models.append(m)
                row = {"C": C}
                if len(ho):
                    row["heldout_top1"], row["heldout_top5"] = self._acc(m, Xn[ho], fm.y[ho])
                if X_val is not None:
                    row["val_top1"], row["val_top5"] = self._acc(m, Xv, yv)
                self.scores_.append(row)
            key = "heldout_top1" if self.select_on == "heldout" else "val_top1"
            self.best_index_ = int(np.argmax([r[key] for r in self.scores_]))
            self.best_C_ = Cs[self.best_index_]
            self.selection_ = self.select_on
            if self.refit and self.select_on == "heldout":
                self.estimator_ = self._model(self.best_C_).fit(Xn, fm.y)
            else:
                self.estimator_ = models[self.best_index_]
        if X_val is not None:
            self.val_top1_, self.val_top5_ = self._acc(self.estimator_, Xv, yv)
        lr = self.estimator_[-1] if self.standardize else self.estimator_
        self.coef_, self.intercept_ = lr.coef_, lr.intercept_
        self.n_iter_ = lr.n_iter_
        self.n_features_in_ = Xn.shape[1]
        return self

    def _X(self, X):
        return to_numpy32(predict_input(self, X).X)

    def predict(self, X) -> np.ndarray:
        Xn = self._X(X)
        return self.estimator_.predict(Xn)

    def predict_proba(self, X) -> np.ndarray:
        Xn = self._X(X)
        return self.estimator_.predict_proba(Xn)

    def decision_function(self, X) -> np.ndarray:
        Xn = self._X(X)
        return self.estimator_.decision_function(Xn)

    def report(self) -> dict:
        """JSON-able summary {"best": {"C", "top1", "top5", "split"}, "selection", "note", "scores"}."""
        check_is_fitted(self)
        best = self.scores_[self.best_index_]
        split = "val" if hasattr(self, "val_top1_") else "heldout"
        top = (self.val_top1_, self.val_top5_) if split == "val" else (best["heldout_top1"], best["heldout_top5"])
        note = ("C selected on a held-out split of train, refit on all of train" if self.selection_ == "heldout"
                else "C selected ON VAL (select_on='val'): the val accuracy is optimistic")
        return {"best": {"C": self.best_C_, "top1": top[0], "top5": top[1], "split": split,
                         "refit": bool(self.refit and self.selection_ == "heldout")},
                "selection": self.selection_, "note": note, "scores": self.scores_}
