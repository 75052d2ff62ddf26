"""KNNClassifier: DINO weighted kNN; faiss, torch and a brute-force numpy reference agree exactly."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from conftest import require_extra
from svgfeat.errors import ConfigError
from svgfeat.heads import knn as knn_mod
from svgfeat.heads.knn import KNNClassifier, dot64, l2_normalize

faiss = require_extra("faiss")  # the [faiss] extra: skipped without it locally, a failure under CI=true


def reference(Xtr, ytr, Xq, ks, T=0.07):
    """Brute force in numpy: full float64 cosine matrix, (sim desc, index asc) order, DINO votes."""
    Tn, Qn = l2_normalize(Xtr), l2_normalize(Xq)
    S = dot64(Qn[:, None, :], Tn[None, :, :])  # [nq, n] float64
    idx = np.broadcast_to(np.arange(len(Tn)), S.shape)
    order = np.lexsort((idx, -S), axis=-1)
    classes = np.unique(ytr)
    yi = np.searchsorted(classes, ytr)
    out = {}
    for k in ks:
        nb = order[:, :k]
        votes = np.zeros((len(Xq), len(classes)))
        for i in range(len(Xq)):
            for j in nb[i]:
                votes[i, yi[j]] += np.exp(S[i, j] / T)
        top = np.argsort(-votes, axis=1, kind="stable")[:, :5]
        out[k] = (classes[top[:, 0]], classes[top], nb)
    return out


def data(seed=0, n=600, nq=80, d=24, c=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    X = (centers[y] + 1.2 * rng.normal(size=(n, d))).astype(np.float32)
    yq = rng.integers(0, c, nq)
    Xq = (centers[yq] + 1.2 * rng.normal(size=(nq, d))).astype(np.float32)
    X[100:130] = X[7]  # duplicated training images: exact ties
    Xq[:3] = X[7] * 2.0  # queries whose neighbours are a tie group
    return X, y, Xq, yq


BACKENDS = ["torch", "faiss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_bruteforce_reference(backend):
    X, y, Xq, yq = data()
    ks = (10, 20, 100, 200)
    ref = reference(X, y, Xq, ks)
    clf = KNNClassifier(k=ks, backend=backend, query_batch=32, train_chunk=128).fit(X, y)
    assert clf.backend_ == backend
    sims, idx = clf.kneighbors(Xq)
    np.testing.assert_array_equal(idx, ref[200][2])
    np.testing.assert_array_equal(idx[0, :31], np.r_[7, np.arange(100, 130)])  # ties broken by index
    for k, (p1, p5) in clf.predict_all(Xq).items():
        np.testing.assert_array_equal(p1, ref[k][0])
        np.testing.assert_array_equal(p5, ref[k][1])
    res = clf.evaluate(Xq, yq)
    assert set(res["k"]) == {"10", "20", "100", "200"}
    assert res["k"]["20"]["top1"] == pytest.approx(100 * np.mean(ref[20][0] == yq))
    assert res["k"]["20"]["top5"] == pytest.approx(100 * np.mean((ref[20][1] == yq[:, None]).any(1)))


def test_faiss_and_torch_identical():
    X, y, Xq, _ = data(seed=3, n=900, d=48)
    Xq = np.concatenate([Xq, X[::37] + 1e-7])  # near-duplicates of training rows
    a = KNNClassifier(backend="faiss", k=(1, 5, 20)).fit(X, y)
    b = KNNClassifier(backend="torch", k=(1, 5, 20), train_chunk=100, query_batch=17).fit(X, y)
    for k in (1, 5, 20):
        np.testing.assert_array_equal(a.predict_all(Xq)[k][1], b.predict_all(Xq)[k][1])
    sa, ia = a.kneighbors(Xq)
    sb, ib = b.kneighbors(Xq)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(sa, sb)


def test_boundary_tie_group_larger_than_margin():
    """40 identical neighbours straddle k=10 with margin 4: the candidate list must grow, ties by index."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    X[50:90] = X[3]
    y = rng.integers(0, 3, 300)
    q = X[3:4] * 3
    for backend in ["torch", "faiss"]:
        clf = KNNClassifier(k=10, margin=4, backend=backend).fit(X, y)
        _, idx = clf.kneighbors(q)
        assert idx[0].tolist() == [3] + list(range(50, 59))


def test_dino_voting_by_hand():
    X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], np.float32)
    y = np.array([0, 0, 1, 1, 2])
    clf = KNNClassifier(k=3, temperature=0.5, backend="torch").fit(X, y)
    q = np.array([[0.6, 0.4]], np.float32)
    s = (l2_normalize(X).astype(np.float64) @ l2_normalize(q)[0].astype(np.float64))
    top = np.argsort(-s)[:3]
    votes = np.zeros(3)
    for j in top:
        votes[y[j]] += np.exp(s[j] / 0.5)
    assert clf.predict(q)[0] == np.argmax(votes)
    np.testing.assert_allclose(clf.predict_proba(q)[0], votes / votes.sum(), rtol=1e-12)


def test_k_clipped_and_contract():
    X, y, Xq, yq = data(n=50, nq=5)
    clf = KNNClassifier(backend="torch").fit(X, y)
    assert clf.ks_ == [10, 20, 50]  # 100 and 200 clipped to the 50 training rows
    assert clf.predict(Xq).shape == (5,)
    assert 0.0 <= clf.score(Xq, yq) <= 1.0
    assert clone(clf).get_params()["k"] == (10, 20, 100, 200)
    with pytest.raises(NotFittedError):
        KNNClassifier().predict(Xq)
    with pytest.raises(ConfigError, match="temperature"):
        KNNClassifier(temperature=0).fit(X, y)
    with pytest.raises(ConfigError, match="backend"):
        KNNClassifier(backend="annoy").fit(X, y)
    with pytest.raises(ConfigError, match="X has 3 features, but KNNClassifier is expecting 24"):
        clf.predict(Xq[:, :3])
    monkey = KNNClassifier(backend="auto")
    assert monkey.fit(X, y).backend_ in ("faiss", "torch")


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    monkeypatch.setattr(knn_mod, "has_faiss", lambda: False)
    X, y, Xq, _ = data(n=100, nq=4)
    assert KNNClassifier().fit(X, y).backend_ == "torch"
    with pytest.raises(ImportError, match="faiss"):
        KNNClassifier(backend="faiss").fit(X, y)


def test_l2_normalize_is_chunk_independent_and_in_place():
    """Float32 blocks give bit-identical results to one float64 pass, and never need a float64 matrix."""
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(1000, 17)) * rng.uniform(0.01, 100, size=(1000, 1))).astype(np.float32)
    X[5] = 0
    X64 = X.astype(np.float64)
    ref = (X64 / np.maximum(np.sqrt((X64 * X64).sum(1, keepdims=True)), 1e-12)).astype(np.float32)
    for chunk in (1, 7, 256, 5000):
        np.testing.assert_array_equal(l2_normalize(X, chunk=chunk), ref)
    Y = X.copy()
    out = l2_normalize(Y, out=Y, chunk=64)
    assert out is Y and out.dtype == np.float32
    np.testing.assert_array_equal(Y, ref)
    assert not Y[5].any()  # zero rows stay zero


def test_fit_from_a_cache_streams_into_one_matrix_and_checks_memory(tmp_path, monkeypatch):
    """A cache of many tiny shards gives the same predictions as its arrays; a feature matrix larger than the
    memory budget is refused up front, naming its size."""
    from svgfeat.cache import from_arrays
    from svgfeat.errors import CacheError

    X, y, Xq, yq = data(seed=4, n=300, nq=40, d=16)
    tr = from_arrays(tmp_path / "tr", {"cls": X[:, :8], "pooled": X[:, 8:].astype(np.float16)}, labels=y,
                     shard_size=7)
    ref = KNNClassifier(k=(5, 20)).fit(np.concatenate([X[:, :8], X[:, 8:].astype(np.float16)], 1), y)
    got = KNNClassifier(k=(5, 20), features="cls+pooled").fit(tr)
    np.testing.assert_array_equal(got.X_, ref.X_)
    np.testing.assert_array_equal(got.predict(Xq), ref.predict(Xq))
    monkeypatch.setenv("SVGFEAT_MEMORY_BUDGET", "4K")
    with pytest.raises(CacheError, match=r"float32 feature matrix \[300, 16\] of cls\+pooled needs"):
        KNNClassifier(features="cls+pooled").fit(tr)


def test_search_progress_over_blocks_without_one_step_bars(capsys):
    """kNN over query blocks shows a tqdm bar (counted in queries); a search that is one block prints none."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 3, 300)
    clf = KNNClassifier(k=5, query_batch=64, progress=True).fit(X, y)
    capsys.readouterr()
    clf.predict(X[:200])
    err = capsys.readouterr().err
    assert "kNN search" in err and "200/200" in err
    clf.predict(X[:50])  # one block
    assert "kNN search" not in capsys.readouterr().err


def test_negative_and_string_labels_keep_every_class():
    """Labels {-1, +1}: both classes are kept (-1 used to be dropped as "unlabelled", scoring 0.46)."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-3, 1, (50, 4)), rng.normal(3, 1, (50, 4))]).astype(np.float32)
    y = np.repeat([-1, 1], 50)
    clf = KNNClassifier(k=(5, 10)).fit(X, y)
    assert clf.classes_.tolist() == [-1, 1] and clf.score(X, y) == 1.0
    assert clf.evaluate(X, y)["k"]["5"]["top1"] == 100.0  # -1 rows of a y you pass are evaluated too
