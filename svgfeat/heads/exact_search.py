"""Exact (brute-force) nearest-neighbour search in torch, streamed over database batches.

Used as the search backend when faiss is not installed (small data only), as the ground truth of the recall
measured when an approximate index is built, and by the benchmark. Metrics: ``"ip"`` (inner product, larger is
closer; cosine after L2 normalisation) and ``"l2"`` (squared euclidean distance, smaller is closer) — the same
conventions as faiss's ``METRIC_INNER_PRODUCT`` / ``METRIC_L2``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


@contextlib.contextmanager
def exact_matmul(device):
    """float32 matmuls on ``device`` in full float32 inside the block: on CUDA, TF32 is switched off
    (whatever the caller set globally) and the caller's setting restored afterwards; a no-op elsewhere."""
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def as_float32(x, name: str = "vectors") -> np.ndarray:
    """numpy array / torch tensor (any device) -> C-contiguous float32 numpy ``[n, d]``."""
    from ..errors import DataError

    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:  # noqa: BLE001 - report what was received
            raise DataError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}") from e
    if x.dtype.kind not in "fiu":
        raise DataError(f"{name}: expected numeric values, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array [n, d], got shape {tuple(x.shape)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    return x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of a float32 ``[n, d]`` array (zero rows stay zero); returns a new array."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class TopK:
    """Running top-k over database batches for a fixed set of queries.

    ``update(scores [nq, b], ids [b])`` merges one batch; ``result()`` -> ``(D float32 [nq, k], I int64 [nq, k])``
    sorted best first, padded with ``-1`` ids (and ``-inf``/``inf`` scores) when fewer than k were seen.
    """

    def __init__(self, nq: int, k: int, largest: bool, device="cpu"):
        fill = -float("inf") if largest else float("inf")
        self.k, self.largest = k, largest
        self.D = torch.full((nq, k), fill, dtype=torch.float32, device=device)
        self.I = torch.full((nq, k), -1, dtype=torch.int64, device=device)

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        ids = ids.to(self.I.device, torch.int64).expand(scores.shape[0], -1)
        D = torch.cat([self.D, scores.to(self.D.device, torch.float32)], dim=1)
        nbr = torch.cat([self.I, ids], dim=1)
        kk = min(self.k, D.shape[1])
        top, pos = torch.topk(D, kk, dim=1, largest=self.largest, sorted=True)
        self.D[:, :kk], self.I[:, :kk] = top, torch.gather(nbr, 1, pos)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.D.cpu().numpy().astype(np.float32), self.I.cpu().numpy().astype(np.int64)


def batch_scores(q: torch.Tensor, x: torch.Tensor, metric: str) -> torch.Tensor:
    """Scores ``[nq, b]``: inner products, or squared L2 distances (computed exactly as ``sum((q-x)**2)``
    through the expansion ``|q|² - 2 q·x + |x|²``, clamped at 0)."""
    ip = q @ x.T
    if metric == "ip":
        return ip
    d = (q * q).sum(1, keepdim=True) - 2 * ip + (x * x).sum(1)[None]
    return d.clamp_min_(0)


def exact_search(queries, batches, k: int, metric: str = "ip", device="cpu", query_batch: int = 4096):
    """Exact top-k of ``queries`` [nq, d] against a database given as an array [n, d] or an iterable of
    ``(ids int64 [b], vectors float32 [b, d])`` batches. Returns ``(D float32 [nq, k], I int64 [nq, k])``."""
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    q = torch.from_numpy(as_float32(queries, "queries")).to(device)
    if isinstance(batches, (np.ndarray, torch.Tensor)):
        batches = iter_array(batches)
    tops = [TopK(min(query_batch, len(q) - s), k, largest=metric == "ip", device=device)
            for s in range(0, len(q), query_batch)]
    for ids, xb in batches:
        x = torch.as_tensor(xb, dtype=torch.float32).to(device)
        ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.int64, device=device)[None]
        for j, top in enumerate(tops):
            qs = q[j * query_batch:(j + 1) * query_batch]
            with exact_matmul(device):  # exact means float32, never TF32
                top.update(batch_scores(qs, x, metric), ids_t)
    parts = [t.result() for t in tops]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def iter_array(x, batch_size: int = 65536):
    """Yield ``(ids, vectors)`` batches of an in-memory ``[n, d]`` array/tensor."""
    n = x.shape[0]
    for s in range(0, n, batch_size):
        yield np.arange(s, min(n, s + batch_size), dtype=np.int64), x[s:s + batch_size]


def recall_at_k(I_approx: np.ndarray, I_exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k ids found in the approximate top-k (ids ``-1`` never count)."""
    hits = 0
    total = 0
    for a, e in zip(I_approx[:, :k], I_exact[:, :k]):
        e = set(int(v) for v in e if v >= 0)
        total += len(e)
        hits += len(e & set(int(v) for v in a if v >= 0))
    return hits / max(total, 1)
