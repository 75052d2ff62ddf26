"""Where a step of the device-resident probe trainer goes (issue R point 2), profiled with torch.profiler.

One step of the DINOv3 grid (13 heads x 1000 classes on 768-d features, batch 1024) is two GEMMs
([B, D] x [D, H*K] forward, [D, B] x [B, H*K] weight gradient) plus float32 elementwise work (softmax, the
label scatter, the SGD update of 10M weights) and one gather of the batch rows. The script runs ``--steps``
steps of :func:`svgfeat.heads._resident.train_grid_resident` under the profiler and prints the operators by
self time and the share of the step spent in matrix products (``aten::mm`` / ``addmm`` / ``bmm``) -- the
ratio against the rest of the step, measured in the same run.

    python benchmarks/profile_probe.py                      # CPU, float32, 12 steps
    python benchmarks/profile_probe.py --dtype bfloat16 --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from svgfeat.heads._base import DINOV3_LRS
from svgfeat.heads._grid import BatchOrder, GridConfig
from svgfeat.heads._resident import RESIDENT_DTYPES, resident_matrix, train_grid_resident

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--dtype", default="float32", choices=tuple(RESIDENT_DTYPES))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.rows, args.dim, generator=g)
    y = torch.randint(0, args.classes, (args.rows,), generator=g).to(args.device)
    Xd = resident_matrix(X, args.device, RESIDENT_DTYPES[args.dtype])
    rows = np.arange(args.rows)
    cfg = GridConfig(lrs=tuple(lr * args.batch / 256 for lr in DINOV3_LRS), wds=(0.0,) * len(DINOV3_LRS),
                     steps=args.steps, batch_size=args.batch)
    train_grid_resident(Xd, y, BatchOrder(rows, rows, np.zeros(args.rows, np.int64), 1), args.classes,
                        GridConfig(**{**cfg.__dict__, "steps": 2}))  # warm-up
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(args.device).type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_grid_resident(Xd, y, BatchOrder(rows, rows, np.zeros(args.rows, np.int64), 0), args.classes, cfg)
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()
    cuda = torch.device(args.device).type == "cuda"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    mm = sum(getattr(e, key) for e in events if e.key in MATMUL_OPS)
    print(f"{args.steps} steps of {len(DINOV3_LRS)} heads x {args.classes} classes, D={args.dim}, "
          f"batch {args.batch}, {args.dtype} on {args.device} ({torch.get_num_threads()} threads)")
    print(f"{'operator':<28} {'self ms':>10} {'share':>7} {'calls':>6}")
    for e in sorted(events, key=lambda e: -getattr(e, key))[:10]:
        t = getattr(e, key)
        print(f"{e.key:<28} {t / 1e3:>10.1f} {t / total:>7.1%} {e.count:>6}")
    print(f"per step: {total / 1e3 / args.steps:.1f} ms, of which matrix products {mm / 1e3 / args.steps:.1f} ms "
          f"({mm / total:.1%}); matmul / rest of the step = {mm / max(total - mm, 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
