"""The device-resident probe trainer: the whole linear-probe grid on an accelerator without the host in the loop.

Designed for the DINOv3 grid on ImageNet on one GPU -- 13 heads x 12,500 steps at batch 1024 on 1.28M x 768
features in <= 10 s (``benchmarks/gpu_suite.py``, section ``probe-resident``):

- the features live in device memory once, normalised in place and stored in ``dtype`` (bf16: 1.28M x 768 is
  2 GB), written block by block from the host matrix (no second full copy anywhere);
- the batch order of every step (the same :class:`~svgfeat.heads._grid.BatchOrder` as the host path) is copied
  to the device in one transfer before the first step; a batch is a gather by index on the device;
- all heads are one matmul: the weights are one [D, H*K] matrix, forward ``x @ W`` and weight gradient
  ``x^T @ G`` are two GEMMs of ``dtype`` inputs per step, softmax and the update in float32;
- the learning-rate schedule is a device tensor and nothing is read back per step (no ``.item()``, no
  data-dependent Python), so the host only queues kernels.

On the CPU (``device="cpu"``) the same code runs, which is how it is tested: with ``dtype=torch.float32`` it
agrees with :func:`~svgfeat.heads._grid.train_grid` to float rounding (the update rules are the same:
torch.optim.SGD / AdamW semantics).
"""

from __future__ import annotations

import numpy as np
import torch

from ._base import progress_bar
from ._grid import BatchOrder, GridConfig, lr_factor, optimizer_step

RESIDENT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
COPY_BLOCK = 65536  # host rows normalised and copied to the device per block


def resident_matrix(X, device, dtype: torch.dtype, mean=None, scale=None, block: int = COPY_BLOCK) -> torch.Tensor:
    """X [n, D] (numpy / tensor, any float dtype, any device) -> ``(X - mean) / scale`` as one [n, D] ``dtype``
    tensor on ``device``, written block by block (float32 arithmetic per block; no other full-size copy)."""
    n, D = X.shape
    out = torch.empty((n, D), dtype=dtype, device=device)
    m = None if mean is None else mean.to(device, torch.float32)
    s = None if scale is None else scale.to(device, torch.float32)
    for a in range(0, n, block):
        xb = X[a:a + block]
        xb = (xb if isinstance(xb, torch.Tensor) else torch.from_numpy(np.asarray(xb))).to(device).float()
        if m is not None:
            xb = (xb - m) / s
        out[a:a + block] = xb.to(dtype)
    return out


def batch_plan(order: BatchOrder, steps: int, batch_size: int, device) -> tuple[torch.Tensor, list[int]]:
    """Every step's row indices, concatenated into one int64 device tensor (one transfer), and the step
    boundaries [steps + 1] as Python ints: step s uses ``flat[bounds[s]:bounds[s + 1]]``."""
    parts, bounds = [], [0]
    for idx in order.batches(steps, batch_size):
        parts.append(idx)
        bounds.append(bounds[-1] + len(idx))
    return torch.from_numpy(np.concatenate(parts)).to(device), bounds


class ResidentGrid:
    """H linear heads as one weight matrix W [D, H*K] (column h*K + k is class k of head h) and bias [H*K],
    float32 masters on ``device``; ``step`` is two GEMMs in ``dtype`` plus float32 elementwise work."""

    def __init__(self, dim: int, n_classes: int, cfg: GridConfig, device, dtype: torch.dtype):
        if cfg.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
        H, D, K = len(cfg.lrs), dim, n_classes
        self.shape, self.cfg, self.dtype = (H, D, K), cfg, dtype
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(int(cfg.seed) + 1)
        w0 = torch.randn(D, K, generator=g) * cfg.init_std  # the same init as the host path, every head
        self.W = w0.repeat(1, H).to(self.device)  # [D, H*K]
        self.b = torch.zeros(H * K, device=self.device)
        self.lr = torch.tensor(cfg.lrs, dtype=torch.float32, device=self.device).repeat_interleave(K)
        self.wd = torch.tensor(cfg.wds, dtype=torch.float32, device=self.device).repeat_interleave(K)
        self.any_wd = bool(any(w != 0 for w in cfg.wds))
        n_state = 1 if cfg.optimizer == "sgd" else 2
        self.state = [(torch.zeros_like(self.W), torch.zeros_like(self.b)) for _ in range(n_state)]
        self.t = 0

    def step(self, xb: torch.Tensor, yb: torch.Tensor, factor: torch.Tensor) -> None:
        """xb [B, D] in ``dtype`` (normalised), yb [B] int64 class indices, factor: 0-d device tensor."""
        H, D, K = self.shape
        B = xb.shape[0]
        logits = torch.mm(xb, self.W.to(self.dtype)).float().add_(self.b)  # one GEMM: all heads
        G = torch.softmax(logits.view(B, H, K), dim=2)
        G.scatter_add_(2, yb.view(B, 1, 1).expand(B, H, 1), torch.full((B, H, 1), -1.0, device=self.device))
        G = G.view(B, H * K).div_(B)
        gW = torch.mm(xb.t(), G.to(self.dtype)).float()  # one GEMM: every head's weight gradient
        gb = G.sum(0)
        lr = self.lr * factor
        self.t += 1
        for P, g, i in ((self.W, gW, 0), (self.b, gb, 1)):
            state = (self.state[0][i],) if self.cfg.optimizer == "sgd" else (self.state[0][i], self.state[1][i])
            optimizer_step(self.cfg, P, g, state, lr, self.wd, self.any_wd, self.t)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [H, D, K], b [H, K]) float32 contiguous, like :class:`~svgfeat.heads._grid.GridHeads`."""
        H, D, K = self.shape
        return (self.W.view(D, H, K).permute(1, 0, 2).contiguous(), self.b.view(H, K).clone())


def train_grid_resident(Xd: torch.Tensor, y: torch.Tensor, order: BatchOrder, n_classes: int, cfg: GridConfig,
                        progress: bool = False) -> ResidentGrid:
    """Train the grid on device-resident features Xd [n, D] (from :func:`resident_matrix`; its dtype is the
    matmul dtype) with labels y [n] int64 on the same device. No host-device synchronisation per step."""
    heads = ResidentGrid(Xd.shape[1], n_classes, cfg, Xd.device, Xd.dtype)
    flat, bounds = batch_plan(order, cfg.steps, cfg.batch_size, Xd.device)
    factors = torch.tensor([lr_factor(s, cfg.steps, cfg.schedule) for s in range(cfg.steps)],
                           dtype=torch.float32, device=Xd.device)
    steps = progress_bar(range(cfg.steps), cfg.steps, progress, desc=f"probe ({len(cfg.lrs)} heads, resident)",
                         unit="step")
    for s in steps:
        idx = flat[bounds[s]:bounds[s + 1]]
        heads.step(Xd[idx], y[idx], factors[s])
    return heads
