"""Weighted k-nearest-neighbour classification (DINO protocol) on L2-normalised features.

Protocol (DINO ``eval_knn.py``): cosine similarity between a query and every training feature, the k most
similar neighbours vote for their class with weight exp(sim / T) (T = 0.07), votes are summed per class,
the argmax is the top-1 prediction and the 5 largest the top-5. All ks (default 10, 20, 100, 200) come out
of one neighbour search.

Determinism: a backend (faiss ``IndexFlatIP`` when installed, else chunked torch matmuls with a running
top-k merge) only proposes ``max(k) + margin`` candidates per query; candidates are then re-scored in
float64 (elementwise products summed per row in numpy, a fixed summation order) and ranked by
(similarity desc, train index asc). A query whose candidate list could hide a tie at the boundary is
searched again with a larger list (finally exactly). Votes are summed in neighbour order in float64 and
class ties go to the smaller class index. Hence faiss, torch (CPU or GPU) and a brute-force numpy
reference give identical predictions.

Features: the CLS token by default (``features="cls"``), as in DINO/DINOv3's kNN evaluation; pass another
feature spec (e.g. ``"cls+pooled"``, ``"latent"``) to change it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import ConfigError, MissingDependencyError
from ._base import DINOV3_KS, is_cache, progress_bar
from ._contract import ScoreMixin, fit_input, labels_from_cache, predict_input
from ._features import eval_rows, to_numpy32
from .exact_search import exact_matmul

DEFAULT_KS = DINOV3_KS
DEFAULT_FEATURES = "cls"  # DINO / DINOv3 kNN protocol: the CLS token
BACKENDS = ("auto", "faiss", "torch")


NORM_CHUNK = 8192  # rows normalised per float64 block (~50 MB at D = 768): memory stays ~1x float32


def l2_normalize(X: np.ndarray, out: np.ndarray | None = None, chunk: int = NORM_CHUNK) -> np.ndarray:
    """Canonical row normalisation: float64 norm, float32 result [n, D]; zero rows stay zero.

    Works in blocks of ``chunk`` rows, so there is never a float64 copy of the whole matrix; ``out`` (float32
    [n, D], may be ``X`` itself) receives the result in place. Each row's result depends only on that row, so
    the output is bit-identical whatever ``chunk`` is.
    """
    X = np.asarray(X)
    if out is None:
        out = np.empty(X.shape, np.float32)
    assert out.shape == X.shape and out.dtype == np.float32, (out.shape, out.dtype)
    for a in range(0, len(X), int(chunk)):
        b64 = np.asarray(X[a:a + int(chunk)], dtype=np.float64)
        n = np.sqrt((b64 * b64).sum(1, keepdims=True))
        out[a:a + int(chunk)] = b64 / np.maximum(n, 1e-12)
    return out


def dot64(q: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Canonical similarity: float64 elementwise product summed over the last axis.

    q [..., D] broadcast against T [..., D] (float32 inputs) -> float64 [...]; the summation order per
    pair depends only on D, so equal vectors give bit-equal similarities wherever they are.
    """
    return (q.astype(np.float64) * T.astype(np.float64)).sum(-1)


def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _rank(sims: np.ndarray, idx: np.ndarray):
    """Sort each row by (sim desc, index asc). sims float64 [n, M], idx int64 [n, M]."""
    order = np.lexsort((idx, -sims), axis=-1)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)


class KNNClassifier(ScoreMixin, ClassifierMixin, BaseEstimator):
    """Temperature-weighted kNN on cosine similarity; all ks in one pass.

    Parameters: k -- int or sequence of ints (default 10, 20, 100, 200); temperature -- T of the
    exp(sim/T) vote weights; features -- feature spec for caches / SVGFeatures (default "cls", the
    DINO protocol); backend -- "auto"
    (faiss if installed and device is not CUDA, else torch), "faiss" or "torch"; device -- torch device of the torch backend;
    query_batch -- queries per search chunk; train_chunk -- training rows per similarity block of the torch
    backend (running top-k merge across blocks); margin -- extra candidates re-scored exactly;
    predict_k -- k used by predict / predict_proba / score (default 20 if present, else the first k).

    Labels: any values (negative integers, strings); only labels read from a feature cache (X a cache, y not
    given) use -1 for "unlabelled" -- those rows never vote. ``predict`` and friends change nothing on the
    estimator (no index is built lazily: the faiss backend searches the stored matrix with ``faiss.knn``).

    Fitted attributes: classes_ [C]; X_ float32 [n, D] L2-normalised training features; y_ int64 [n]
    class indices; ks_ (effective ks, clipped to n); backend_.
    """

    def __init__(self, k=DEFAULT_KS, temperature: float = 0.07, features: str = DEFAULT_FEATURES,
                 backend: str = "auto", device="cpu", query_batch: int = 1024, train_chunk: int = 262144,
                 margin: int = 16, predict_k=None, progress: bool = False):
        self.k = k
        self.temperature = temperature
        self.features = features
        self.backend = backend
        self.device = device
        self.query_batch = query_batch
        self.train_chunk = train_chunk
        self.margin = margin
        self.predict_k = predict_k
        self.progress = progress

    def fit(self, X, y=None):
        """Store L2-normalised training features X [n, D] (or a cache: one row per sample) and labels y."""
        ks = sorted({int(v) for v in np.atleast_1d(self.k)})
        if not ks or ks[0] < 1:
            raise ConfigError(f"k must be positive integers, got {self.k!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "faiss" and not has_faiss():
            raise MissingDependencyError("faiss-cpu", "faiss",
                                         "kNN with backend='faiss' (svgfeat[faiss-gpu] on a GPU machine)")
        fm = fit_input(self, X, y, features=self.features, progress=self.progress)
        rows = eval_rows(fm.sample_ids, fm.view_ids)
        yv = fm.y[rows]
        if labels_from_cache(X, y) and (yv == -1).any():  # unlabelled cache rows (-1) never vote
            rows, yv = rows[yv != -1], yv[yv != -1]
        # one float32 training matrix: normalised in place when we own it (read from a cache), else one copy
        owned = is_cache(X) and isinstance(fm.X, np.ndarray)
        X32 = to_numpy32(fm.X)
        if len(rows) != len(X32) or not np.array_equal(rows, np.arange(len(X32))):
            X32, owned = X32[rows], True
        Xn = l2_normalize(X32, out=X32 if owned else None)
        del X32, fm
        if len(yv) == 0:
            raise ConfigError("KNNClassifier.fit received no labelled rows")
        self.classes_ = np.unique(yv)
        self.y_ = np.searchsorted(self.classes_, yv).astype(np.int64)
        self.X_ = np.ascontiguousarray(Xn)
        self.n_features_in_ = int(Xn.shape[1])
        self.ks_ = sorted({min(k, len(yv)) for k in ks})
        if self.backend == "auto":  # a GPU matmul beats faiss-cpu; on CPU faiss's BLAS search wins
            on_gpu = torch.device(self.device).type == "cuda"
            self.backend_ = "faiss" if has_faiss() and not on_gpu else "torch"
        else:
            self.backend_ = self.backend
        self.class_names_ = list(X.classes) if labels_from_cache(X, y) and X.classes else None
        # the torch backend on an accelerator: the one device copy of the training matrix, made here (never
        # lazily in predict); on the CPU the stored matrix is used as is
        on_cpu = torch.device(self.device).type == "cpu"
        self._train_t = None if self.backend_ == "faiss" or on_cpu else torch.from_numpy(self.X_).to(self.device)
        self._gpu_index = self._faiss_gpu_index() if self.backend_ == "faiss" else None
        return self

    # ------------------------------------------------------------------ search
    def _tol(self) -> float:
        # bound on |float32 dot - exact dot| for unit vectors (x2 for both sides), generous
        # (the torch backend's CUDA matmuls run with TF32 off: exact_matmul)
        return 4.0 * self.n_features_in_ * 2.0 ** -24 + 1e-6

    def _faiss_gpu_index(self):
        """An exact inner-product faiss index of the stored matrix on ``self.device`` when it is a CUDA device and
        faiss-gpu sees a GPU; None otherwise (CPU faiss searches the stored matrix directly)."""
        dev = torch.device(self.device)
        if dev.type != "cuda":
            return None
        import faiss

        from .faiss_gpu import gpu_count, to_gpu

        if gpu_count(faiss) == 0:
            return None
        cpu = faiss.IndexFlatIP(self.X_.shape[1])
        cpu.add(self.X_)
        return to_gpu(faiss, dev.index if dev.index is not None else torch.cuda.current_device(), cpu)

    def _candidates(self, Q: np.ndarray, m: int) -> np.ndarray:
        """Indices int64 [nq, m] of the (approximately) m most similar training rows."""
        if self.backend_ == "faiss":  # brute-force inner-product search of the stored matrix (no index copy)
            import faiss

            from .faiss_gpu import GPU_MAX_K

            gpu_index = getattr(self, "_gpu_index", None)
            if gpu_index is not None and m <= GPU_MAX_K:  # exact flat search on the GPU (built in fit)
                _, idx = gpu_index.search(Q, m)
            else:
                if gpu_index is not None:  # faiss-gpu returns at most 2048 neighbours
                    warnings.warn(f"kNN: {m} candidates exceed faiss-gpu's limit of {GPU_MAX_K}; searching the "
                                  "same matrix with CPU faiss instead", stacklevel=2)
                _, idx = faiss.knn(Q, self.X_, m, metric=faiss.METRIC_INNER_PRODUCT)
            return idx.astype(np.int64)
        dev = torch.device(self.device)
        T = self._train_t if getattr(self, "_train_t", None) is not None else torch.from_numpy(self.X_)
        T = T.to(dev)  # no copy on the device it lives on
        q = torch.from_numpy(Q).to(dev)
        best_s = best_i = None
        for s in range(0, len(T), int(self.train_chunk)):
            with exact_matmul(dev):  # float32 similarities on CUDA too (TF32 off, caller's flag restored)
                sims = q @ T[s:s + int(self.train_chunk)].t()
            v, i = sims.topk(min(m, sims.shape[1]), dim=1)
            i = i + s
            if best_s is not None:
                v, j = torch.cat([best_s, v], 1).topk(m, dim=1)
                i = torch.gather(torch.cat([best_i, i], 1), 1, j)
            best_s, best_i = v, i
        return best_i.cpu().numpy().astype(np.int64)

    def _exact_rows(self, Q: np.ndarray, m: int):
        """Exact canonical top-m for a few queries (fallback), streamed over the training set."""
        n = len(self.X_)
        out_s, out_i = [], []
        for q in Q:
            s = np.concatenate([dot64(q[None], self.X_[a:a + NORM_CHUNK]) for a in range(0, n, NORM_CHUNK)])
            top = np.argpartition(-s, m - 1)[:m] if m < n else np.arange(n)
            thr = s[top].min()
            cand = np.flatnonzero(s >= thr)  # keep every tie at the boundary
            ss, ii = _rank(s[cand][None], cand[None].astype(np.int64))
            out_s.append(ss[0, :m])
            out_i.append(ii[0, :m])
        return np.stack(out_s), np.stack(out_i)

    def kneighbors(self, X, n_neighbors: int | None = None, *, _normalized: bool = False):
        """Canonical neighbours of X [nq, D]: (sims float64 [nq, k], indices int64 [nq, k]), sorted by
        (similarity desc, training index asc). ``n_neighbors`` defaults to max(ks)."""
        check_is_fitted(self)
        n = len(self.X_)
        k = min(int(n_neighbors or self.ks_[-1]), n)
        Q = X if _normalized else l2_normalize(to_numpy32(predict_input(self, X).X))
        tol = self._tol()
        sims_out = np.empty((len(Q), k), np.float64)
        idx_out = np.empty((len(Q), k), np.int64)
        starts = range(0, len(Q), int(self.query_batch))
        bar = progress_bar(None, len(Q), self.progress and len(starts) > 1, desc=f"kNN search ({n:,} neighbours)",
                           unit="query")  # counted in queries; no bar for a one-block search
        for a in starts:
            qb = Q[a:a + int(self.query_batch)]
            todo = np.arange(len(qb))
            m = min(k + int(self.margin), n)
            while len(todo):
                cand = self._candidates(np.ascontiguousarray(qb[todo]), m)
                sims = np.concatenate([dot64(qb[todo][i:i + 32, None], self.X_[cand[i:i + 32]])
                                       for i in range(0, len(todo), 32)])
                sims, cand = _rank(sims, cand)
                # safe when no non-candidate can reach the k-th similarity (see module docstring)
                ok = (m == n) | (sims[:, k - 1] > sims[:, -1] + 2 * tol)
                sims_out[a + todo[ok]] = sims[ok, :k]
                idx_out[a + todo[ok]] = cand[ok, :k]
                todo = todo[~ok]
                if len(todo) and m * 4 >= n:
                    s, i = self._exact_rows(qb[todo], k)
                    sims_out[a + todo], idx_out[a + todo] = s, i
                    todo = todo[:0]
                m = min(m * 4, n)
            if bar is not None:
                bar.update(len(qb))
        if bar is not None:
            bar.close()
        return sims_out, idx_out

    def _votes(self, sims: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
        """Class scores float64 [nq, C] from the first k neighbours (weights exp(sim/T))."""
        w = np.exp(sims[:, :k] / float(self.temperature))
        lab = self.y_[idx[:, :k]]
        votes = np.zeros((len(sims), len(self.classes_)), np.float64)
        r = np.arange(len(sims))
        for j in range(k):  # fixed summation order: neighbour rank
            votes[r, lab[:, j]] += w[:, j]
        return votes

    def predict_all(self, X) -> dict:
        """{k: (top-1 labels [nq], top-5 labels [nq, min(5, C)])} for every k in ks_."""
        sims, idx = self.kneighbors(X)
        out = {}
        for k in self.ks_:
            v = self._votes(sims, idx, k)
            top = np.argsort(-v, axis=1, kind="stable")[:, :min(5, v.shape[1])]
            out[k] = (self.classes_[top[:, 0]], self.classes_[top])
        return out

    def _pk(self) -> int:
        check_is_fitted(self)
        if self.predict_k is not None:
            if int(self.predict_k) not in self.ks_:
                raise ConfigError(f"predict_k={self.predict_k} is not one of the fitted ks {self.ks_}")
            return int(self.predict_k)
        return 20 if 20 in self.ks_ else self.ks_[0]

    def predict(self, X) -> np.ndarray:
        """Top-1 labels [nq] with k = predict_k."""
        sims, idx = self.kneighbors(X, self._pk())
        return self.classes_[self._votes(sims, idx, self._pk()).argmax(1)]

    def predict_proba(self, X) -> np.ndarray:
        """Normalised class votes [nq, C] with k = predict_k."""
        sims, idx = self.kneighbors(X, self._pk())
        v = self._votes(sims, idx, self._pk())
        return v / v.sum(1, keepdims=True)

    def evaluate(self, X, y=None) -> dict:
        """Top-1/top-5 accuracy (percent) for every k on X (one row per sample).

        Returns {"k": {"10": {"top1", "top5"}, ...}, "best": {"k", "top1", "top5"}, "temperature",
        "backend", "n_train", "n_query", "numerics"}. "best" is the largest top-1 (ties: smaller k) -- reported for
        convenience; the DINO protocol reports k=20.
        """
        fm = predict_input(self, X, y, progress=self.progress)
        if fm.y is None:
            raise ConfigError("evaluate needs labels: pass y or a labelled cache")
        rows = eval_rows(fm.sample_ids, fm.view_ids)
        if labels_from_cache(X, y):
            rows = rows[fm.y[rows] != -1]  # unlabelled cache rows are not evaluated
        yq = fm.y[rows]
        preds = self.predict_all(to_numpy32(fm.X)[rows])
        res = {}
        for k, (p1, p5) in preds.items():
            res[str(k)] = {"top1": float((p1 == yq).mean() * 100), "top5": float((p5 == yq[:, None]).any(1).mean() * 100)}
        bk = max(res, key=lambda s: (res[s]["top1"], -int(s)))
        from ..numerics import Numerics

        return {"k": res, "best": {"k": int(bk), **res[bk]}, "temperature": float(self.temperature),
                "backend": self.backend_, "n_train": int(len(self.X_)), "n_query": int(len(rows)),
                "numerics": Numerics.for_device(self.device).record()}  # float32 on device, float64 sums
