"""Retrieval: build time, queries/s and recall@10 of Flat / IVF / IVF-PQ / HNSW vs exact brute force.

Baseline measured in the same run: exact search (faiss ``Flat``, BLAS brute force; and svgfeat's exact torch
search, the fallback used when faiss is absent). Every index is built with ``svgfeat.FaissIndex`` at its default
settings (nprobe = max(8, sqrt(nlist)), efSearch = 64, cosine metric). Data: 100k vectors, 1000 held-out queries:

- ``clustered``: a 500-centre Gaussian mixture in 64-d (image features are clustered: this is the realistic case);
- ``uniform``: i.i.d. Gaussian 64-d (no neighbourhood structure: every ANN method loses recall here);
- ``--cache PATH [--group pooled]``: real cached features (optional).

    python benchmarks/bench_retrieval.py [--n 100000] [--d 64] [--threads 1] [--cache PATH --group pooled]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer  # noqa: E402


def clustered(n, d, clusters=500, spread=0.7, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)


def best_of(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def recall(nbr, truth, k=10):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(nbr, truth)]))


def run(name, X, Q, factories, k=10):
    from svgfeat.heads.exact_search import exact_search, l2_normalize
    from svgfeat.heads.retrieval import FaissIndex

    n, d = X.shape
    print(f"\n== {name}: {n} x {d} vectors, {len(Q)} queries, k={k}")
    with Timer() as tb:
        flat = FaissIndex("Flat").fit(X)
    t_exact, (_, truth) = best_of(lambda: flat.search(Q, k))
    Xn, Qn = l2_normalize(X), l2_normalize(Q)
    t_torch, (_, tt) = best_of(lambda: exact_search(Qn, Xn, k), repeats=1)
    assert recall(tt, truth) > 0.999, "torch exact search disagrees with faiss Flat"
    qps_exact = len(Q) / t_exact
    print(f"{'index':<20}{'build s':>9}{'queries/s':>12}{'x exact':>9}{'recall@10':>11}{'build-time recall':>19}")
    print(f"{'exact (faiss Flat)':<20}{tb.seconds:>9.2f}{qps_exact:>12.0f}{1.0:>9.2f}{1.0:>11.3f}{'':>19}")
    print(f"{'exact (torch)':<20}{0.0:>9.2f}{len(Q) / t_torch:>12.0f}{t_exact / t_torch:>9.2f}{1.0:>11.3f}{'':>19}")
    rows = []
    for f in factories:
        with Timer() as tb:
            idx = FaissIndex(f).fit(X)
        t, (_, nbr) = best_of(lambda idx=idx: idx.search(Q, k))
        r = recall(nbr, truth, k)
        label = idx.factory_ if f != "auto" else f"auto={idx.factory_}"
        built = idx.recall_["recall"] if idx.recall_ else float("nan")
        print(f"{label:<20}{tb.seconds:>9.2f}{len(Q) / t:>12.0f}{t_exact / t:>9.2f}{r:>11.3f}{built:>19.3f}")
        rows.append((label, tb.seconds, len(Q) / t, t_exact / t, r))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1: stable on shared CPUs)")
    ap.add_argument("--cache", default=None, help="also benchmark real cached features")
    ap.add_argument("--group", default="pooled")
    a = ap.parse_args(argv)

    import faiss

    from svgfeat.heads.index_factory import default_nlist

    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    nlist = default_nlist(a.n)
    from svgfeat.heads.index_factory import auto_factory

    factories = [f"IVF{nlist},Flat", f"IVF{nlist},PQ{a.d // 4}", "HNSW32"]
    print("factory='auto' picks %r for %d x %d vectors (4GB budget): %s" % (*auto_factory(a.n, a.d)[:1], a.n, a.d,
                                                                         auto_factory(a.n, a.d)[1]))
    data = clustered(a.n + a.queries, a.d, seed=1)
    run("clustered (500-centre Gaussian mixture)", data[:a.n], data[a.n:], factories)
    rng = np.random.default_rng(2)
    data = rng.standard_normal((a.n + a.queries, a.d)).astype(np.float32)
    run("uniform (i.i.d. Gaussian)", data[:a.n], data[a.n:], [f"IVF{nlist},Flat", "HNSW32"])
    if a.cache:
        import svgfeat

        c = svgfeat.open_cache(a.cache)
        X = c.read(a.group).reshape(len(c), -1).astype(np.float32)
        q = np.random.default_rng(0).choice(len(X), size=min(a.queries, len(X)), replace=False)
        run(f"cache {a.cache} group {a.group}", X, X[q], ["HNSW32", "auto"])
    print(f"\ntotal {time.perf_counter() - t0:.1f} s (faiss threads: {a.threads})")


if __name__ == "__main__":
    main()
