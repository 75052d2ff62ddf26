"""Linear-probe classification (DINOv3 ImageNet-1K protocol) with a grid of heads trained together.

DINOv3 (``dinov3/eval/linear.py``) trains one linear head per learning rate -- 13 rates 1e-5 ... 0.1,
scaled by batch/256 -- with SGD (momentum 0.9, no weight decay) and a cosine schedule on [CLS, mean patch
token] features, then reports the best head. :class:`LinearProbe` does the same in one pass over the data
per epoch for all heads (one batched matmul, see :mod:`svgfeat.heads._grid`), on CPU or GPU, and by
default selects the head on a held-out split of *train* (``select_on="heldout"``) so that the reported
val accuracy is unbiased; ``select_on="val"`` reproduces DINOv3's selection on val and is labelled so.

Feature normalisation is an explicit choice (``normalize``): ``"zscore"`` (the default: train-set
mean/std, fixed), ``"none"`` (raw features, DINOv3's protocol) or ``"batchnorm"`` (BatchNorm without
affine in front of the heads, MAE's protocol; batch statistics while training, running statistics at
eval). On the digits sample with full-size (random-weight) features at 64 px, raw features trail
scikit-learn's best-C logistic regression by ~6 points (88.9 vs 95.0), z-score and batchnorm come within
0.3 (94.7); tests/test_probe.py holds the z-score probe to 1 point.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import ConfigError
from ._base import DINOV3_LRS, is_cache, progress_bar
from ._contract import ScoreMixin, check_features, fit_input, labels_from_cache, predict_input
from ._features import DEFAULT_SPEC, aligned_labels, as_labels, eval_rows, feature_matrix, row_ids
from ._grid import (
    NORMALIZATIONS,
    BatchOrder,
    FeatureNorm,
    GridConfig,
    evaluate_grid,
    grid_hits,
    hits_to_percent,
    train_grid,
)
from ._resident import RESIDENT_DTYPES, resident_matrix, train_grid_resident

SELECTIONS = ("heldout", "val")
VAL_BLOCK = 65536  # val rows read from a cache per block (a multiple of the evaluation chunk: same sums)
DEFAULT_NORMALIZE = "zscore"
NORMALIZE_NOTES = {
    "none": "raw features (DINOv3 protocol)",
    "zscore": "z-score with train-split mean/std (svgfeat default)",
    "batchnorm": "BatchNorm without affine before the heads (MAE protocol; running stats at eval)",
}


def heldout_split(sample_ids: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """Split rows into (train_rows, heldout_rows) by *sample*: all views of an image land on one side.

    Stratified by label when every class has >= 2 samples and both sides can hold every class; else a
    plain seeded random split. Returns two sorted np.int64 row arrays.
    """
    from sklearn.model_selection import train_test_split

    uniq, first = np.unique(sample_ids, return_index=True)
    n = len(uniq)
    n_held = int(round(n * fraction))
    if not 1 <= n_held < n:
        raise ConfigError(
            f"heldout_fraction={fraction} leaves {n_held} of {n} samples held out; need at least 1 sample "
            "on each side (use a larger fraction, more data, or select_on='val')"
        )
    lab = labels[first]
    classes, counts = np.unique(lab, return_counts=True)
    stratify = lab if (counts.min() >= 2 and n_held >= len(classes) and n - n_held >= len(classes)) else None
    _, held = train_test_split(uniq, test_size=n_held, random_state=seed, stratify=stratify)
    is_held = np.isin(sample_ids, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


class LinearProbe(ScoreMixin, ClassifierMixin, BaseEstimator):
    """A grid of linear softmax classifiers trained together; the best one is used for prediction.

    Parameters: features -- feature spec used when X is a cache / SVGFeatures (see
    :mod:`svgfeat.heads._features`); lrs -- base learning rates (default DINOv3's 13); weight_decays --
    grid of weight decays (heads = lrs x weight_decays); optimizer -- "sgd" (momentum) or "adamw";
    scale_lr -- multiply lrs by batch_size/256 (None: True for sgd, False for adamw); epochs /
    iterations / min_iterations -- training length (``iterations``, when set, is the exact step count;
    otherwise ``epochs`` epochs but at least ``min_iterations`` steps, so that small datasets do not stop
    after a handful of steps); batch_size; schedule -- "cosine" or
    "constant"; normalize -- "zscore" (default; train statistics), "none" (raw, DINOv3) or "batchnorm"
    (no affine, MAE; trained jointly with the heads); select_on -- "heldout" (split
    ``heldout_fraction`` of train by sample, stratified) or "val" (needs X_val in fit; DINOv3 protocol);
    device; random_state; resident_dtype -- None (features read batch by batch from the float matrix, float32
    matmuls) or "bfloat16" / "float16" / "float32": the device-resident trainer of
    :mod:`svgfeat.heads._resident` (features normalised once into one device copy of that dtype, all heads in
    one matmul of that dtype, no host sync per step; the GPU path, never chosen implicitly); progress -- tqdm
    bars.

    Fitted attributes: classes_ [K]; W_ [H, D, K] / b_ [H, K] float32 CPU tensors; coef_ [K, D] /
    intercept_ [K] numpy of the best head; heads_ (list of dicts per head: name, lr, base_lr, wd and
    heldout_/val_ top1/top5 in percent); best_index_; selection_; heldout_rows_ (rows of the training
    input used for selection, empty with select_on="val"); train_rows_; norm_ (the fitted
    :class:`~svgfeat.heads._grid.FeatureNorm` or None) with mean_ / scale_ [D] (None for "none").
    """

    def __init__(self, features: str = DEFAULT_SPEC, lrs=None, weight_decays=(0.0,), optimizer: str = "sgd",
                 momentum: float = 0.9, scale_lr=None, epochs: int = 10, iterations=None,
                 min_iterations: int = 1000, batch_size: int = 1024, schedule: str = "cosine",
                 normalize: str = DEFAULT_NORMALIZE, select_on: str = "heldout", heldout_fraction: float = 0.1,
                 device="cpu", random_state: int = 0, init_std: float = 0.01, resident_dtype=None,
                 progress: bool = False):
        self.features = features
        self.lrs = lrs
        self.weight_decays = weight_decays
        self.optimizer = optimizer
        self.momentum = momentum
        self.scale_lr = scale_lr
        self.epochs = epochs
        self.iterations = iterations
        self.min_iterations = min_iterations
        self.batch_size = batch_size
        self.schedule = schedule
        self.normalize = normalize
        self.select_on = select_on
        self.heldout_fraction = heldout_fraction
        self.device = device
        self.random_state = random_state
        self.init_std = init_std
        self.resident_dtype = resident_dtype
        self.progress = progress

    # ------------------------------------------------------------------ validation
    def _grid(self):
        lrs = DINOV3_LRS if self.lrs is None else tuple(float(v) for v in np.atleast_1d(self.lrs))
        wds = tuple(float(v) for v in np.atleast_1d(self.weight_decays))
        if not lrs or any(not (v > 0 and np.isfinite(v)) for v in lrs):
            raise ConfigError(f"lrs must be positive finite numbers, got {self.lrs!r}")
        if not wds or any(not (v >= 0 and np.isfinite(v)) for v in wds):
            raise ConfigError(f"weight_decays must be >= 0, got {self.weight_decays!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.select_on not in SELECTIONS:
            raise ConfigError(f"select_on must be one of {SELECTIONS}, got {self.select_on!r}")
        if self.iterations is not None and int(self.iterations) < 1:
            raise ConfigError(f"iterations must be >= 1 (or None to use epochs), got {self.iterations!r}")
        if int(self.epochs) < 1 or int(self.min_iterations or 0) < 0:
            raise ConfigError(f"epochs must be >= 1 and min_iterations >= 0, got epochs={self.epochs!r}, "
                              f"min_iterations={self.min_iterations!r}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.resident_dtype is not None and self.resident_dtype not in RESIDENT_DTYPES:
            raise ConfigError(f"resident_dtype must be None or one of {tuple(RESIDENT_DTYPES)}, "
                              f"got {self.resident_dtype!r}")
        if self.resident_dtype is not None and self.normalize == "batchnorm":
            raise ConfigError("resident_dtype needs normalize='zscore' or 'none' (the resident features are "
                              "normalised once, in place; batchnorm normalises every batch)")
        if self.select_on == "heldout" and not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        scale = (self.optimizer == "sgd") if self.scale_lr is None else bool(self.scale_lr)
        factor = self.batch_size / 256.0 if scale else 1.0
        heads = [(lr, wd) for wd, lr in itertools.product(wds, lrs)]
        return heads, factor

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, X_val=None, y_val=None, sample_ids=None, view_ids=None):
        """Train every head on X [n, D] (array-like / tensor / FeatureCache / SVGFeatures) with labels y [n].

        X_val / y_val: optional validation data (a cache is read in blocks); its per-head accuracy is reported
        in ``heads_`` and, with select_on="val", used for selection. sample_ids / view_ids [n]: rows sharing a
        sample_id are augmented views of one image (one is sampled per epoch; the held-out split never
        separates them). Any label values work; only labels read from a cache use -1 for "unlabelled"
        (refused here: every training row needs a label).

        Memory: one feature matrix -- the caller's array / tensor as given (moved once to ``device``), or the
        float32 matrix read from a cache. The held-out split is a row index, the z-score statistics come from
        a streaming pass and are applied batch by batch, evaluation gathers rows chunk by chunk.
        """
        heads, factor = self._grid()
        fm = fit_input(self, X, y, features=self.features, sample_ids=sample_ids, view_ids=view_ids,
                       progress=self.progress)
        if labels_from_cache(X, y) and np.issubdtype(fm.y.dtype, np.integer) and (fm.y < 0).any():
            raise ConfigError(f"{int((fm.y < 0).sum())} training rows of the cache are unlabelled (label -1); "
                              "a linear probe needs every training row labelled")
        classes = np.unique(fm.y)
        if len(classes) < 2:
            raise ConfigError(f"need at least 2 classes to train a classifier, got 1 class: {classes.tolist()}")
        if self.select_on == "val" and X_val is None:
            raise ConfigError("select_on='val' needs validation data: fit(X, y, X_val=..., y_val=...)")
        self.classes_ = classes
        # class names of a training cache: other caches' labels are matched to them by name
        self.class_names_ = list(X.classes) if labels_from_cache(X, y) and X.classes else None
        yi = np.searchsorted(self.classes_, fm.y)
        self.feature_groups_ = fm.groups
        self.n_features_in_ = int(fm.X.shape[1])

        if self.select_on == "heldout":
            train_rows, held_rows = heldout_split(fm.sample_ids, fm.y, self.heldout_fraction,
                                                  self.random_state)
            held_rows = held_rows[eval_rows(fm.sample_ids[held_rows], fm.view_ids[held_rows])]
        else:
            train_rows, held_rows = np.arange(len(fm.y)), np.zeros(0, np.int64)
        self.train_rows_, self.heldout_rows_ = train_rows, held_rows

        device = torch.device(self.device)
        resident = self.resident_dtype is not None
        Xt = fm.X if isinstance(fm.X, torch.Tensor) else torch.from_numpy(np.asarray(fm.X))
        fm.X = None  # the matrix lives on in Xt only (moved to the device when that is not where it is)
        Xt = Xt if resident else Xt.to(device)
        if not Xt.dtype.is_floating_point:
            Xt = Xt.float()
        yt = torch.from_numpy(yi).to(device)
        if self.normalize == "zscore":
            norm = FeatureNorm.zscore(Xt, torch.from_numpy(train_rows).to(Xt.device))
            norm = norm.to(device)
        elif self.normalize == "batchnorm":
            norm = FeatureNorm("batchnorm", Xt.shape[1], device)
        else:
            norm = None
        order = BatchOrder(train_rows, fm.sample_ids, fm.view_ids, self.random_state)
        bs = min(int(self.batch_size), order.n_samples)
        steps_per_epoch = -(-order.n_samples // bs)
        if self.iterations:  # an explicit step count wins over epochs and min_iterations
            steps = int(self.iterations)
        else:
            steps = max(int(self.epochs) * steps_per_epoch, int(self.min_iterations or 0), 1)
        cfg = GridConfig(lrs=tuple(lr * factor for lr, _ in heads), wds=tuple(wd for _, wd in heads),
                         optimizer=self.optimizer, momentum=self.momentum, steps=steps, batch_size=bs,
                         schedule=self.schedule, init_std=self.init_std, seed=self.random_state)
        if resident:  # one normalised copy in device memory, in resident_dtype; every matmul in that dtype
            Xt = resident_matrix(Xt, device, RESIDENT_DTYPES[self.resident_dtype],
                                 None if norm is None else norm.mean, None if norm is None else norm.scale)
            grid = train_grid_resident(Xt, yt, order, len(self.classes_), cfg, self.progress)
            grid.W, grid.b = grid.weights()
        else:
            grid = train_grid(Xt, yt, order, len(self.classes_), cfg, norm, self.progress)
        self.norm_ = norm  # batchnorm: now in eval mode (running statistics)
        self.mean_ = None if norm is None else norm.mean.cpu()
        self.scale_ = None if norm is None else norm.scale.cpu()
        self.n_iter_ = steps
        self.batch_size_ = bs
        self.W_ = grid.W.clone(memory_format=torch.contiguous_format).cpu()
        self.b_ = grid.b.clone(memory_format=torch.contiguous_format).cpu()

        multi_wd = len({wd for _, wd in heads}) > 1
        self.heads_ = [{"name": _head_name(lr, wd, multi_wd), "base_lr": lr, "lr": lr * factor, "wd": wd}
                       for lr, wd in heads]
        if len(held_rows):
            t1, t5 = evaluate_grid(grid.W, grid.b, Xt, yt, None if resident else self._transform(device),
                                   rows=torch.from_numpy(held_rows))
            for h, a, b in zip(self.heads_, t1, t5):
                h["heldout_top1"], h["heldout_top5"] = float(a), float(b)
        del Xt, grid
        if X_val is not None:
            t1, t5, _ = self._evaluate_all(X_val, y_val)
            for h, a, b in zip(self.heads_, t1, t5):
                h["val_top1"], h["val_top5"] = float(a), float(b)
        key = "heldout_top1" if self.select_on == "heldout" else "val_top1"
        self.selection_ = self.select_on
        self.best_index_ = int(np.argmax([h[key] for h in self.heads_]))  # first index wins ties
        W, b = self.W_[self.best_index_], self.b_[self.best_index_]
        if self.norm_ is not None:  # fold the (eval-mode) normalisation into the sklearn-style coefficients
            W = W / self.scale_[:, None]
            b = b - (self.mean_[:, None] * W).sum(0)
        self.coef_ = W.t().numpy().copy()
        self.intercept_ = b.numpy().copy()
        return self

    def _transform(self, device):
        norm = getattr(self, "norm_", None)
        return None if norm is None else norm.to(device)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _logits64(self, X, head: int | None, chunk: int = 8192) -> np.ndarray:
        """Logits float64 [n, K] of the best head (or head ``head``). Each row's result depends on that row
        only (float64 products: batch size and row order do not change the values)."""
        fm = predict_input(self, X)
        h = self.best_index_ if head is None else int(head)
        device = torch.device(self.device)
        W, b = self.W_[h].to(device, torch.float64), self.b_[h].to(device, torch.float64)
        tf = self._transform(device)
        Xt = fm.X if isinstance(fm.X, torch.Tensor) else torch.from_numpy(np.asarray(fm.X))
        out = []
        for i in range(0, len(Xt), chunk):
            xb = Xt[i:i + chunk].to(device).float()
            xb = (xb if tf is None else tf(xb)).double()
            out.append(torch.addmm(b, xb, W).cpu())
        return torch.cat(out).numpy()

    def decision_function(self, X, head: int | None = None) -> np.ndarray:
        """Logits float64 [n, K] of the best head (or head index ``head``); with two classes the margin
        logit(classes_[1]) - logit(classes_[0]) [n] (positive: classes_[1]), as scikit-learn expects."""
        logits = self._logits64(X, head)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict(self, X, head: int | None = None) -> np.ndarray:
        """Predicted labels [n] (values of ``classes_``)."""
        logits = self._logits64(X, head)
        return self.classes_[logits.argmax(1)]

    def predict_proba(self, X, head: int | None = None) -> np.ndarray:
        """Class probabilities float64 [n, K] (softmax of the logits)."""
        return torch.softmax(torch.from_numpy(self._logits64(X, head)), dim=1).numpy()

    def evaluate(self, X, y=None) -> dict:
        """Top-1/top-5 (percent) of every head on X (one row per sample: view 0 of augmented caches).

        Returns {"top1": [H] list, "top5": [H] list, "best": {"head", "top1", "top5"}, "n": rows}.
        """
        t1, t5, n = self._evaluate_all(X, y)
        i = self.best_index_
        return {"top1": t1.tolist(), "top5": t5.tolist(), "n": n,
                "best": {"head": self.heads_[i]["name"], "top1": float(t1[i]), "top5": float(t5[i])}}

    @torch.no_grad()
    def _evaluate_all(self, X, y):
        """(top1 [H], top5 [H], rows evaluated): one row per sample; a cache is read VAL_BLOCK rows at a time,
        its unlabelled rows (-1) skipped."""
        check_is_fitted(self)
        device = torch.device(self.device)
        W, b = self.W_.to(device), self.b_.to(device)
        tf = self._transform(device)
        if is_cache(X):
            if y is not None:
                yall = as_labels(y, len(X))
            elif self.class_names_:
                yall = aligned_labels(self.class_names_, X)
            else:
                yall = np.asarray(X.labels, np.int64)
            rows = eval_rows(*row_ids(X))
            if labels_from_cache(X, y):
                rows = rows[yall[rows] != -1]  # unlabelled rows are not evaluated
            blocks = [rows[a:a + VAL_BLOCK] for a in range(0, len(rows), VAL_BLOCK)]
            it = progress_bar(blocks, len(blocks), self.progress, desc="evaluating", unit="block")
            parts = ((check_features(self, feature_matrix(X, features=self.features, rows=r).X), yall[r], None)
                     for r in it)
        else:
            fm = predict_input(self, X, y, progress=self.progress)
            if fm.y is None:
                raise ConfigError("evaluate needs labels: pass y or a labelled cache")
            rows = eval_rows(fm.sample_ids, fm.view_ids)
            parts = [(fm.X, fm.y, None if len(rows) == len(fm.y) else torch.from_numpy(rows))]
        c1 = c5 = 0
        for Xb, yb, r in parts:
            Xb = Xb if isinstance(Xb, torch.Tensor) else torch.from_numpy(np.asarray(Xb))
            yi = np.searchsorted(self.classes_, yb).clip(0, len(self.classes_) - 1)
            yi = np.where(self.classes_[yi] == yb, yi, -1)  # unseen classes (and -1): always wrong
            h1, h5 = grid_hits(W, b, Xb, torch.from_numpy(yi), tf, rows=r)
            c1, c5 = c1 + h1, c5 + h5
        t1, t5 = hits_to_percent(c1, c5, len(rows))
        return t1, t5, int(len(rows))

    def report(self, X_val=None, y_val=None) -> dict:
        """JSON-able summary: {"best": {"head", "lr", "wd", "top1", "top5", ...}, "selection", "note",
        "heads": [...], "config": {...}, "numerics": {...}}; accuracies in percent. "best" top1/top5 are on val when val
        accuracies are known (from fit or ``X_val``), else on the held-out split."""
        check_is_fitted(self)
        heads = [dict(h) for h in self.heads_]
        if X_val is not None:
            res = self.evaluate(X_val, y_val)
            for h, a, b in zip(heads, res["top1"], res["top5"]):
                h["val_top1"], h["val_top5"] = a, b
        best = dict(heads[self.best_index_])
        split = "val" if "val_top1" in best else "heldout"
        out_best = {"head": best["name"], "index": self.best_index_, "lr": best["lr"],
                    "base_lr": best["base_lr"], "wd": best["wd"], "top1": best[f"{split}_top1"],
                    "top5": best[f"{split}_top5"], "split": split}
        if "heldout_top1" in best:
            out_best["heldout_top1"], out_best["heldout_top5"] = best["heldout_top1"], best["heldout_top5"]
        note = ("best head selected on a held-out {:.0%} of train (by sample); val never used for selection"
                .format(self.heldout_fraction) if self.selection_ == "heldout" else
                "best head selected ON VAL (DINOv3 protocol, select_on='val'): the val accuracy is optimistic")
        cfg = {k: v for k, v in self.get_params().items() if k not in ("progress",)}
        cfg.update(device=str(cfg["device"]), iterations_run=self.n_iter_, batch_size_used=self.batch_size_,
                   n_features=self.n_features_in_, n_classes=len(self.classes_),
                   feature_groups=self.feature_groups_)
        if cfg["lrs"] is not None:
            cfg["lrs"] = [float(v) for v in np.atleast_1d(cfg["lrs"])]
        cfg["weight_decays"] = [float(v) for v in np.atleast_1d(cfg["weight_decays"])]
        return {"best": out_best, "selection": self.selection_, "note": note, "normalize": self.normalize,
                "normalize_note": NORMALIZE_NOTES[self.normalize], "heads": heads, "config": cfg,
                "numerics": self._numerics_record()}

    def _numerics_record(self) -> dict:
        """How the heads were computed: float32 on ``device`` (no autocast); a device-resident run's matmul
        dtype is added as "resident_dtype"."""
        from ..numerics import Numerics

        rec = Numerics.for_device(self.device).record()
        return {**rec, "resident_dtype": self.resident_dtype} if self.resident_dtype is not None else rec


def _head_name(lr: float, wd: float, with_wd: bool) -> str:
    return f"lr={lr:g}" + (f",wd={wd:g}" if with_wd else "")
