"""The batched trainer behind :class:`~svgfeat.heads.probe.LinearProbe`: H linear softmax heads trained
at once on one stream of mini-batches.

All heads live in one weight tensor ``W [H, D, K]`` and bias ``b [H, K]``; a step is one batched matmul
forward and one backward (softmax cross-entropy gradient written out by hand), followed by a
vectorised SGD-momentum or AdamW update with a per-head learning rate / weight decay vector ``[H]``.
The batch order depends only on the seed and the data, never on H. For small CPU problems (one head's
step <= ``SMALL_HEAD_FLOPS``) each head runs its own matmuls on 64-byte-aligned blocks, single-threaded,
so a grid of 13 heads reproduces 13 separate runs *bit for bit*; larger problems and CUDA use one
GEMM for all heads ([B, D] x [D, H*K] via einsum; 2-5x faster on CPU), which agrees with separate runs
to float rounding.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ._base import progress_bar


@dataclass
class GridConfig:
    """Hyper-parameters of one grid run. lrs / wds: per-head float sequences of equal length H."""

    lrs: tuple
    wds: tuple
    optimizer: str = "sgd"  # "sgd" | "adamw"
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    steps: int = 1000
    batch_size: int = 1024
    schedule: str = "cosine"  # "cosine" | "constant"
    init_std: float = 0.01
    seed: int = 0


class BatchOrder:
    """Deterministic mini-batch row indices: each epoch permutes the samples and picks one view each.

    rows: np.int64 [n] training rows; sample_ids: np.int64 [n] (views of one image share an id).
    ``batches(steps, batch_size)`` yields np.int64 index arrays into the feature matrix.
    """

    def __init__(self, rows: np.ndarray, sample_ids: np.ndarray, view_ids: np.ndarray, seed: int):
        order = np.lexsort((view_ids[rows], sample_ids[rows]))
        self.rows = rows[order]
        sid = sample_ids[self.rows]
        start = np.ones(len(sid), bool)
        start[1:] = sid[1:] != sid[:-1]
        self.starts = np.flatnonzero(start)
        self.counts = np.diff(np.append(self.starts, len(sid)))
        self.multi_view = bool((self.counts > 1).any())
        self.gen = torch.Generator().manual_seed(int(seed))

    @property
    def n_samples(self) -> int:
        return len(self.starts)

    def epoch(self) -> np.ndarray:
        perm = torch.randperm(self.n_samples, generator=self.gen).numpy()
        if not self.multi_view:
            return self.rows[self.starts[perm]]
        pick = torch.rand(self.n_samples, generator=self.gen, dtype=torch.float64).numpy()
        offs = np.minimum((pick * self.counts[perm]).astype(np.int64), self.counts[perm] - 1)
        return self.rows[self.starts[perm] + offs]

    def batches(self, steps: int, batch_size: int, device=None):
        """Yield ``steps`` index batches: np.int64 arrays, or int64 tensors on ``device`` (each epoch's
        order is copied to the device once, so no host-device transfer happens per step)."""
        done = 0
        while done < steps:
            ep = self.epoch()
            if device is not None:
                ep = torch.from_numpy(ep).to(device)
            for i in range(0, len(ep), batch_size):
                if done == steps:
                    return
                yield ep[i:i + batch_size]
                done += 1


SMALL_HEAD_FLOPS = 1.6e7  # per head and step: below this, CPU runs one matmul per head (bit-exact)
SMALL_STEP_FLOPS = 2e9  # all heads, per step: below this, CPU training runs single-threaded


def head_step_flops(batch: int, dim: int, n_classes: int) -> float:
    """Approximate matmul flops of one head's training step (forward + weight gradient)."""
    return 4.0 * batch * dim * n_classes


def per_head_matmuls(device, head_flops: float) -> bool:
    """Small CPU problems: one matmul per head, single-threaded -- bit-exact with a head trained alone
    (the choice depends on one head's work, never on the number of heads). Larger problems and CUDA:
    one batched matmul for all heads (faster; agrees with separate runs to float rounding)."""
    return torch.device(device).type == "cpu" and head_flops <= SMALL_HEAD_FLOPS


def _pad16(n: int) -> int:
    return -(-n // 16) * 16


class GridHeads:
    """State of H linear heads on ``device``: W [H, D, K] and b [H, K] float32 (+ optimizer state).

    All parameters live in one buffer P [H, S]: row h holds head h's transposed weights W_h^T [K, D]
    then its K biases, each block padded to 16 floats so every head's block is 64-byte aligned; ``W``
    and ``b`` are [H, D, K] / [H, K] views of it, and the optimizer updates P in a few elementwise ops.
    Small CPU problems run the matmuls per head in the "K rows" orientation (W_h^T @ x^T, G^T @ x: 4-5x
    faster than x @ W_h for small K), so a head computes exactly what it computes when trained alone
    (same calls, same shapes, same alignment); otherwise one einsum GEMM covers all heads.
    """

    def __init__(self, n_heads: int, dim: int, n_classes: int, cfg: GridConfig, device):
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.shape = (n_heads, dim, n_classes)
        H, D, K = self.shape
        self.sw, self.sb = _pad16(D * K), _pad16(K)
        self.P = torch.zeros(H, self.sw + self.sb, device=self.device)
        self.Wt, self.b = self._views(self.P)
        self.W = self.Wt.transpose(1, 2)  # [H, D, K] view
        g = torch.Generator().manual_seed(int(cfg.seed) + 1)
        w0 = torch.randn(D, K, generator=g) * cfg.init_std  # the same init for every head
        self.W.copy_(w0.to(self.device).expand(H, D, K))
        self.grad = torch.zeros_like(self.P)
        self.gWt, self.gb = self._views(self.grad)
        self.lr = torch.tensor(cfg.lrs, dtype=torch.float32, device=self.device).view(H, 1)
        self.wd = torch.tensor(cfg.wds, dtype=torch.float32, device=self.device).view(H, 1)
        self.any_wd = bool(any(w != 0 for w in cfg.wds))
        self.state = [torch.zeros_like(self.P) for _ in range(1 if cfg.optimizer == "sgd" else 2)]
        self.per_head = per_head_matmuls(self.device, head_step_flops(cfg.batch_size, D, K))
        self.t = 0

    def _views(self, buf):
        """(W^T view [H, K, D], bias view [H, K]) of a [H, S] buffer."""
        H, D, K = self.shape
        S = self.sw + self.sb
        return (buf.as_strided((H, K, D), (S, D, 1), buf.storage_offset()),
                buf.as_strided((H, K), (S, 1), buf.storage_offset() + self.sw))

    def logits(self, xb: torch.Tensor) -> torch.Tensor:
        """xb [B, D] float32 -> logits [H, B, K] (a transposed view of [H, K, B] on the per-head path)."""
        return self._logits_t(xb).transpose(1, 2)

    def _logits_t(self, xb: torch.Tensor) -> torch.Tensor:
        H, D, K = self.shape
        B = xb.shape[0]
        if not self.per_head:  # one [B, D] x [D, H*K] GEMM
            return torch.einsum("hkd,bd->hkb", self.Wt, xb).add_(self.b.unsqueeze(2))
        S = _pad16(B * K)
        out = torch.empty(H, S, device=self.device).as_strided((H, K, B), (S, B, 1))
        xt = xb.t()
        for h in range(H):
            torch.addmm(self.b[h].unsqueeze(1), self.Wt[h], xt, out=out[h])
        return out

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr_factor: float) -> None:
        """One optimisation step of every head on batch xb [B, D] float32 / yb [B] (class indices)."""
        H = self.shape[0]
        B = xb.shape[0]
        L = self._logits_t(xb)  # [H, K, B]
        cols = torch.arange(B, device=self.device)
        if self.per_head:
            for h in range(H):  # softmax cross-entropy gradient, written out (same ops as a lone head)
                G = L[h]
                G.sub_(G.amax(0, keepdim=True)).exp_()
                G.div_(G.sum(0, keepdim=True))
                G[yb, cols] -= 1.0
                G.div_(B)
                torch.mm(G, xb, out=self.gWt[h])
                torch.sum(G, 1, out=self.gb[h])
        else:
            G = L.sub_(L.amax(1, keepdim=True)).exp_()
            G.div_(G.sum(1, keepdim=True))
            G[:, yb, cols] -= 1.0
            G.div_(B)
            self.gWt.copy_(torch.einsum("hkb,bd->hkd", G, xb))
            self.gb.copy_(G.sum(2))
        lr = self.lr * lr_factor
        self.t += 1
        P, g = self.P, self.grad
        optimizer_step(self.cfg, P, g, self.state, lr, self.wd, self.any_wd, self.t)


NORMALIZATIONS = ("none", "zscore", "batchnorm")
BN_MOMENTUM, BN_EPS = 0.1, 1e-6  # torch BatchNorm1d momentum; MAE's eps
STATS_BLOCK = 8192  # rows per float64 block of the z-score statistics (50 MB at D = 768)


class FeatureNorm:
    """Per-feature normalisation in front of the heads, applied to every float32 batch [B, D].

    kind "zscore": fixed (x - mean) / std with the training rows' statistics (std floored at 1e-6).
    kind "batchnorm": BatchNorm1d without affine (MAE's linear probe): in training mode each batch is
    normalised with its own mean / biased variance and the running statistics are updated like torch's
    (momentum 0.1, unbiased variance); in eval mode (after training) it uses the running statistics.
    BN has no parameters and the features are frozen, so one BN shared by all heads is exactly one BN
    per head. ``mean`` / ``scale`` [D] are the eval-mode affine map (used to fold into coef_).
    """

    def __init__(self, kind: str, dim: int, device, mean=None, scale=None):
        if kind not in ("zscore", "batchnorm"):
            raise ValueError(f"FeatureNorm kind must be 'zscore' or 'batchnorm', got {kind!r}")
        self.kind, self.training = kind, kind == "batchnorm"
        dev = torch.device(device)
        self.running_mean = torch.zeros(dim, device=dev) if mean is None else mean.to(dev).float()
        self.running_var = torch.ones(dim, device=dev)
        self._scale = None if scale is None else scale.to(dev).float()

    @classmethod
    def zscore(cls, X: torch.Tensor, rows: torch.Tensor, block: int = STATS_BLOCK):
        """Mean / std (population) of ``X[rows]`` in two streaming float64 passes over blocks of ``block``
        rows: no copy of the training rows (peak extra memory one float64 block). The float64 statistics are
        rounded to float32, so they equal those of the whole-matrix float64 reduction bit for bit unless a
        value lies within ~1e-16 (relative) of a float32 rounding boundary."""
        n, D = len(rows), X.shape[1]
        total = torch.zeros(D, dtype=torch.float64, device=X.device)
        for a in range(0, n, block):
            total += X[rows[a:a + block]].double().sum(0)
        mean = total / n
        sq = torch.zeros_like(total)
        for a in range(0, n, block):
            d = X[rows[a:a + block]].double() - mean
            sq += d.square_().sum(0)
        std = (sq / n).sqrt()
        return cls("zscore", D, X.device, mean.float(), std.clamp_min(1e-6).float())

    @property
    def mean(self) -> torch.Tensor:
        return self.running_mean

    @property
    def scale(self) -> torch.Tensor:
        if self.kind == "zscore":
            return self._scale
        return (self.running_var + BN_EPS).sqrt()

    def eval(self) -> "FeatureNorm":
        self.training = False
        return self

    def to(self, device) -> "FeatureNorm":
        out = FeatureNorm(self.kind, len(self.running_mean), device, self.running_mean, self._scale)
        out.running_var = self.running_var.to(device)
        out.training = self.training
        return out

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (xb - self.mean) / self.scale
        m = xb.mean(0)
        v = xb.var(0, unbiased=False)
        n = xb.shape[0]
        with torch.no_grad():
            self.running_mean.mul_(1 - BN_MOMENTUM).add_(m, alpha=BN_MOMENTUM)
            unbiased = v * (n / (n - 1)) if n > 1 else v
            self.running_var.mul_(1 - BN_MOMENTUM).add_(unbiased, alpha=BN_MOMENTUM)
        return (xb - m) / (v + BN_EPS).sqrt()


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Multiplier of the base lr at 0-based ``step`` of ``total`` (cosine annealing to 0, like
    torch's CosineAnnealingLR(T_max=total, eta_min=0) stepped per iteration)."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


@contextlib.contextmanager
def single_thread(enabled: bool):
    """Run tiny CPU problems single-threaded (intra-op threads only add synchronisation there, and
    collapse under CPU contention); the previous thread count is restored on exit."""
    n = torch.get_num_threads()
    if not enabled or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_grid(X: torch.Tensor, y: torch.Tensor, order: BatchOrder, n_classes: int, cfg: GridConfig,
               transform=None, progress: bool = False) -> GridHeads:
    """Train the grid. X [n, D] (any float dtype, on the training device), y [n] int64 class indices
    on the same device; ``transform``: optional callable applied to each float32 batch (a
    :class:`FeatureNorm`: z-score, or BatchNorm in training mode, switched to eval mode at the end)."""
    heads = GridHeads(len(cfg.lrs), X.shape[1], n_classes, cfg, X.device)
    it = order.batches(cfg.steps, cfg.batch_size, X.device)
    it = progress_bar(it, cfg.steps, progress, desc=f"probe ({len(cfg.lrs)} heads)", unit="step")
    tiny = heads.per_head or (X.device.type == "cpu" and len(cfg.lrs) * head_step_flops(
        cfg.batch_size, X.shape[1], n_classes) <= SMALL_STEP_FLOPS)
    with single_thread(tiny):
        for s, idx in enumerate(it):
            xb = X[idx].float()
            if transform is not None:
                xb = transform(xb)
            heads.step(xb, y[idx], lr_factor(s, cfg.steps, cfg.schedule))
    if isinstance(transform, FeatureNorm):
        transform.eval()
    return heads


@torch.no_grad()
def grid_hits(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor, transform=None,
              chunk: int = 2048, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 / top-5 hit counts (float64 [H] each, on W's device) of every head on X [n, D] / y [n] (class
    indices; -1 = a class unseen in training, always wrong). ``rows``: optional int64 index [m] -- evaluate
    X[rows] / y[rows], gathered one chunk at a time (no copy of the selected rows)."""
    H, _, K = W.shape
    c1 = torch.zeros(H, dtype=torch.float64, device=W.device)
    c5 = torch.zeros_like(c1)
    k = min(5, K)
    n = len(X) if rows is None else len(rows)
    for i in range(0, n, chunk):
        if rows is None:
            xb, yb = X[i:i + chunk], y[i:i + chunk]
        else:
            r = rows[i:i + chunk]
            xb, yb = X[r.to(X.device)], y[r.to(y.device)]
        xb = xb.to(W.device).float()
        if transform is not None:
            xb = transform(xb)
        yb = yb.to(W.device)
        top = torch.einsum("bd,hdk->hbk", xb, W).add_(b.unsqueeze(1)).topk(k, dim=-1).indices
        hit = top == yb.view(1, -1, 1)
        c1 += hit[..., 0].sum(1)
        c5 += hit.any(-1).sum(1)
    return c1, c5


def hits_to_percent(c1: torch.Tensor, c5: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(int(n), 1)
    return (c1 * 100.0 / n).cpu().numpy(), (c5 * 100.0 / n).cpu().numpy()


@torch.no_grad()
def evaluate_grid(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor, transform=None,
                  chunk: int = 2048, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 / top-5 accuracy (percent, float64 [H] each) of every head on X [n, D] / y [n] (or on the rows
    ``rows`` of them); see :func:`grid_hits`."""
    c1, c5 = grid_hits(W, b, X, y, transform, chunk, rows)
    return hits_to_percent(c1, c5, len(X) if rows is None else len(rows))


def optimizer_step(cfg, P: torch.Tensor, g: torch.Tensor, state, lr: float, wd, any_wd: bool, t: int) -> None:
    """One in-place update of ``P`` with gradient ``g``, exactly torch.optim's formulas: SGD (coupled weight decay,
    dampening 0; ``state`` = (momentum buffer,)) or AdamW (decoupled weight decay; ``state`` = (m, v)). Shared by
    the host grid trainer and the device-resident one, so both stay bit-compatible with torch."""
    if cfg.optimizer == "sgd":
        if any_wd:
            g = g + wd * P
        buf = state[0]
        buf.mul_(cfg.momentum).add_(g)
        P.sub_(lr * buf)
    else:
        b1, b2 = cfg.betas
        m, v = state
        if any_wd:
            P.mul_(1 - lr * wd)
        m.mul_(b1).add_(g * (1 - b1))
        v.mul_(b2).add_(g * g * (1 - b2))
        denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(cfg.eps)
        P.sub_((lr / (1 - b1 ** t)) * m / denom)
