"""Building approximate faiss indexes that meet a recall target.

- :func:`train_ivf`: the coarse quantiser of an ``IVF{nlist},...`` index trained by k-means on a seeded sample
  (faiss's rule of thumb: 30–256 points per list), one tqdm step per iteration; the codec (SQ8 / PQ) is trained
  afterwards by faiss on the same sample.
- :func:`tune_search`: the smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) whose recall@k on held-out queries
  reaches a target, by doubling then bisection, within a deadline. When the target is not reached it returns the
  best setting found and says why.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError
from .exact_search import recall_at_k

TRAIN_PER_LIST = (30, 256)  # faiss's rule of thumb for k-means: points per centroid
TRAIN_PER_LIST_DEFAULT = 40
KMEANS_ITERATIONS = 10
EF_MAX = 4096


def train_sample_size(nlist: int, n: int, minimum: int = 0) -> int:
    """Vectors sampled to train an IVF with ``nlist`` lists: 40 per list (faiss warns below 39), within faiss's
    30–256 rule, at least ``minimum`` (PQ codebooks), at most ``n``. k-means costs ~ sample x nlist, so this keeps
    training linear in n (nlist ~ 4 sqrt(n)) instead of training on every row."""
    lo, hi = TRAIN_PER_LIST
    return int(min(n, max(minimum, min(hi * nlist, max(lo * nlist, TRAIN_PER_LIST_DEFAULT * nlist)))))


def bar(total: int | None, desc: str, unit: str, progress: bool):
    """A tqdm bar on stderr, or a no-op when progress is off or the work is a single step (no ``1/1`` bars)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
                disable=not progress or (total is not None and total <= 1))


def _assign(faiss, C: np.ndarray, x: np.ndarray, spherical: bool, block: int = 65536, gid=None) -> np.ndarray:
    q = faiss.IndexFlatIP(C.shape[1]) if spherical else faiss.IndexFlatL2(C.shape[1])
    if gid is not None:  # the assignment step (the k-means cost) on GPU gid, with its process-wide resources
        from .faiss_gpu import to_gpu

        q = to_gpu(faiss, gid, q)
    q.add(C)
    return np.concatenate([q.search(x[s:s + block], 1)[1][:, 0] for s in range(0, len(x), block)])


def kmeans(faiss, x: np.ndarray, k: int, *, spherical: bool, seed: int, niter: int = KMEANS_ITERATIONS,
           progress: bool = False, gid: int | None = None) -> np.ndarray:
    """Lloyd's k-means of ``x`` [m, d] float32 into ``k`` centroids (unit-norm when ``spherical``); empty
    clusters are re-seeded from random points. Assignment uses faiss's exact flat search (on GPU ``gid`` when
    given: ``index build --device cuda``)."""
    rng = np.random.default_rng(seed)
    C = x[rng.choice(len(x), size=k, replace=False)].copy()
    with bar(niter, f"training IVF{k} (k-means on {len(x)} vectors)", "iter", progress) as pb:
        for _ in range(niter):
            a = _assign(faiss, C, x, spherical, gid=gid)
            order = np.argsort(a, kind="stable")
            counts = np.bincount(a, minlength=k)
            used = np.flatnonzero(counts)
            starts = np.concatenate([[0], np.cumsum(counts[used])[:-1]])
            C[used] = np.add.reduceat(x[order], starts, axis=0) / counts[used, None]
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                C[empty] = x[rng.choice(len(x), size=len(empty), replace=False)]
            if spherical:
                C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
            pb.update(1)
    return C.astype(np.float32)


def train_ivf(faiss, index, xt: np.ndarray, *, seed: int, progress: bool = False, gid: int | None = None) -> None:
    """Train ``index`` on ``xt``: for a plain IVF index our k-means trains the coarse quantiser (with progress),
    then faiss trains the codec only; anything else (OPQ/PCA prefixes, PQ without IVF) trains in faiss."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIVF) and inner.quantizer.ntotal == 0 and len(xt) >= inner.nlist:
        spherical = inner.metric_type == faiss.METRIC_INNER_PRODUCT
        C = kmeans(faiss, xt, inner.nlist, spherical=spherical, seed=seed, progress=progress, gid=gid)
        inner.quantizer.add(C)
    index.train(xt)  # faiss skips a quantiser that already holds nlist centroids


def knob(faiss, index, factory: str) -> tuple[str, int, int] | None:
    """The search-time parameter that trades speed for recall and its range: ``("nprobe", 1, nlist)`` for IVF,
    ``("efSearch", 16, 4096)`` for HNSW; None for anything else."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", 1, int(ivf.nlist)
    if "HNSW" in factory:
        return "efSearch", 16, EF_MAX
    return None


def tune_search(search, truth: np.ndarray, k: int, name: str, vmin: int, vmax: int, target: float,
                deadline: float, progress: bool = False) -> dict:
    """Smallest value in ``vmin..vmax`` with ``recall@k(search(value), truth) >= target``.

    ``search(value) -> I`` [nq, k] runs the held-out queries with the parameter set to ``value``. Doubling from
    ``vmin`` finds a passing value, bisection then narrows it to within 1/8. Stops at ``deadline``
    (``time.perf_counter()`` seconds). Returns {"param", "value", "recall", "met", "query_ms", "tried", "why"}:
    the passing value, or the best found with the reason the target was missed."""
    tried: dict[int, tuple[float, float]] = {}
    nq = len(truth)

    def evaluate(v: int) -> float:
        if v not in tried:
            t = time.perf_counter()
            got = search(v)
            tried[v] = (recall_at_k(got, truth, k), (time.perf_counter() - t) * 1000 / max(nq, 1))
            pb.update(1)
            pb.set_postfix_str(f"{name}={v} recall@{k}={tried[v][0]:.3f}")
        return tried[v][0]

    why = ""
    with bar(None, f"tuning {name} for recall@{k} >= {target}", "try", progress) as pb:
        v, lo, hi = vmin, None, None
        while True:  # doubling
            if evaluate(v) >= target:
                hi = v
                break
            lo = v
            if v >= vmax:
                why = f"even {name}={v} (the largest) reaches only {tried[v][0]:.4f}"
                break
            if time.perf_counter() > deadline:
                why = f"the build-time budget ran out while tuning (last tried {name}={v})"
                break
            v = min(vmax, 2 * v)
        while hi is not None and lo is not None and hi - lo > max(1, lo // 8):
            if time.perf_counter() > deadline:
                break
            mid = (lo + hi) // 2
            if evaluate(mid) >= target:
                hi = mid
            else:
                lo = mid
    passing = [v for v, (r, _) in tried.items() if r >= target]
    best = min(passing) if passing else max(tried, key=lambda v: (tried[v][0], -v))
    return {"param": name, "value": int(best), "recall": round(tried[best][0], 4), "met": bool(passing),
            "query_ms": round(tried[best][1], 4),
            "tried": [[int(v), round(r, 4)] for v, (r, _) in sorted(tried.items())], "why": "" if passing else why}


def _no_polysemous(faiss, index) -> None:
    """faiss's factory turns on polysemous training for PQ codes (slow simulated annealing, ~10x the training
    time) although plain search never uses it; switch it off (``PQ{m}np`` in factory terms)."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def make_index(faiss, factory: str, d: int, n: int, metric, src, rng, cosine: bool, *, train_size=None,
               seed: int = 0, progress: bool = False, gid: int | None = None):
    """A faiss index for ``factory`` over ``n`` vectors of ``src``, trained when it needs it (IVF: our k-means on
    a seeded sample of :func:`train_sample_size` vectors). faiss failures become one-line ConfigErrors."""
    from . import index_factory as fac
    from .exact_search import l2_normalize

    try:
        index = faiss.index_factory(d, factory, metric)
    except RuntimeError as e:
        raise ConfigError(f"faiss could not build factory {factory!r} for d={d}: "
                          f"{str(e).strip().splitlines()[-1]}") from None
    _no_polysemous(faiss, index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = int(seed)
    if index.is_trained:
        return index
    nlist = ivf.nlist if ivf is not None else 1
    m = train_size or train_sample_size(nlist, n, fac.PQ_MIN_TRAIN + 16 if "PQ" in factory else 0)
    _, xt = src.sample(m, rng)
    xt = l2_normalize(xt) if cosine else np.ascontiguousarray(xt, dtype=np.float32)
    if len(xt) < nlist:
        raise ConfigError(f"{factory!r} needs at least nlist={nlist} training vectors, "
                          f"got {len(xt)}; use a smaller IVF or 'auto'")
    try:
        train_ivf(faiss, index, xt, seed=seed, progress=progress, gid=gid)
    except RuntimeError as e:
        raise ConfigError(f"faiss could not train {factory!r} on {len(xt)} vectors: "
                          f"{str(e).strip().splitlines()[-1]}") from None
    return index
