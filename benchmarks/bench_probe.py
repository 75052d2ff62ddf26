"""Benchmark: svgfeat's grid linear probe vs the same 13 heads trained one after another, vs sklearn.

All three see the same features (synthetic class-conditional Gaussians shaped like cached DINOv3
``cls`` features, or a feature cache via ``--cache``):

1. ``LinearProbe`` -- 13 DINOv3 learning rates trained together, one pass over the data per epoch;
2. a plain PyTorch loop -- ``nn.Linear`` + ``torch.optim.SGD`` (momentum 0.9) + ``CosineAnnealingLR`` +
   autograd, one head after another with the identical batch order;
3. scikit-learn ``LogisticRegression`` (L-BFGS) over a C grid, i.e. the usual small-data baseline; the
   accuracies are printed side by side so the times compare at matched accuracy.

Equal work: raw features on both sides (``normalize="none"``), the same init, batch order, step count
and lrs, and the same thread policy -- the plain loop runs under exactly the thread setting the grid
picks (single-threaded for tiny steps, else ``--threads``); sklearn gets the same BLAS thread count.
``--path gemm|per-head`` forces the grid's matmul path (``auto`` picks per-head, bit-exact, for heads
below 1.6e7 FLOPs a step, the shared GEMM above); the path used is printed.

``--compare-normalize`` instead measures the probe's accuracy with none / zscore / batchnorm (selected on
val) against scikit-learn's best-C logistic regression on the same features (raw and standardised).

Run: ``python benchmarks/bench_probe.py`` (about a minute on a 2-core CPU); ``--cache DIR --val-cache DIR
--features cls+pooled`` uses feature caches instead of synthetic data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def synthetic(n, d, k, noise, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    X = means[y] + noise * rng.normal(size=(n, d)).astype(np.float32)
    return X.astype(np.float32), y


def plain_loop(X, y, Xv, yv, lrs, batch, steps, seed, device):
    """Reference implementation: one nn.Linear per lr, trained sequentially with torch.optim."""
    from svgfeat.heads._grid import BatchOrder

    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    accs = []
    for lr in lrs:
        head = torch.nn.Linear(X.shape[1], int(y.max()) + 1).to(device)
        with torch.no_grad():  # the probe's init: N(0, 0.01) drawn from generator seed + 1, zero bias
            g = torch.Generator().manual_seed(seed + 1)
            head.weight.copy_((torch.randn(X.shape[1], head.out_features, generator=g) * 0.01).t())
            head.bias.zero_()
        opt = torch.optim.SGD(head.parameters(), lr=lr * batch / 256, momentum=0.9, weight_decay=0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0)
        order = BatchOrder(np.arange(len(y)), np.arange(len(y)), np.zeros(len(y), np.int64), seed)
        for rows in order.batches(steps, batch):
            idx = torch.from_numpy(rows).to(device)
            loss = torch.nn.functional.cross_entropy(head(Xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            accs.append(float((head(torch.from_numpy(Xv).to(device)).argmax(1).cpu().numpy() == yv).mean() * 100))
    return accs


def compare_normalize(X, y, Xv, yv, args):
    """Probe (none / zscore / batchnorm, val selection) vs sklearn best-C on the same features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from svgfeat.heads.probe import LinearProbe

    Cs = (0.01, 0.1, 1.0, 10.0, 100.0)
    sc = StandardScaler().fit(X)
    with threadpool_limits(args.threads):
        raw = max(LogisticRegression(C=C, max_iter=3000).fit(X, y).score(Xv, yv) for C in Cs) * 100
        std = max(LogisticRegression(C=C, max_iter=3000).fit(sc.transform(X), y).score(sc.transform(Xv), yv)
                  for C in Cs) * 100
    print(f"sklearn LogisticRegression best C of {Cs} on val: raw {raw:.2f}, standardised {std:.2f}")
    for norm in ("none", "zscore", "batchnorm"):
        t = time.perf_counter()
        p = LinearProbe(normalize=norm, select_on="val", epochs=args.epochs, min_iterations=args.min_iterations,
                        batch_size=args.batch_size, device=args.device).fit(X, y, X_val=Xv, y_val=yv)
        b = p.report()["best"]
        print(f"probe normalize={norm:<9}: val top-1 {b['top1']:.2f} ({b['head']}, {p.n_iter_} steps, "
              f"{time.perf_counter() - t:.1f}s); minus sklearn standardised {b['top1'] - std:+.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="training rows (synthetic)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--noise", type=float, default=5.0, help="synthetic noise std (task difficulty)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--cache", default=None, help="use a feature cache (train) instead of synthetic data")
    ap.add_argument("--val-cache", default=None, help="val feature cache (default: 1/6 of --cache held out)")
    ap.add_argument("--path", default="auto", choices=["auto", "gemm", "per-head"],
                    help="grid matmul path (auto: per-head below 1.6e7 FLOPs per head-step, else one GEMM)")
    ap.add_argument("--threads", type=int, default=None, help="torch/BLAS threads for every contender")
    ap.add_argument("--compare-normalize", action="store_true")
    ap.add_argument("--min-iterations", type=int, default=1000)
    ap.add_argument("--features", default="cls+pooled")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()
    import sys

    print("command: python benchmarks/bench_probe.py " + " ".join(sys.argv[1:]))
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()

    from svgfeat.heads import _grid
    from svgfeat.heads.probe import DINOV3_LRS, LinearProbe

    if args.cache:
        import svgfeat
        from svgfeat.heads._features import feature_matrix

        fm = feature_matrix(svgfeat.open_cache(args.cache), features=args.features)
        X, y = fm.X, fm.y
        src = f"cache {args.cache} [{args.features}]"
    else:
        X, y = synthetic(args.n + args.n // 5, args.dim, args.classes, args.noise)
        src = "synthetic Gaussians"
    if args.val_cache:
        vm = feature_matrix(svgfeat.open_cache(args.val_cache), features=args.features)
        Xv, yv = vm.X, vm.y
    else:
        n_val = len(y) // 6
        X, y, Xv, yv = X[n_val:], y[n_val:], X[:n_val], y[:n_val]
    if args.compare_normalize:
        return compare_normalize(X, y, Xv, yv, args)
    steps = args.epochs * -(-len(y) // args.batch_size)
    print(f"features: {src}; train {X.shape}, val {Xv.shape}, {len(np.unique(y))} classes; 13 heads, "
          f"{steps} SGD steps at batch {args.batch_size} on {args.device}; torch threads {torch.get_num_threads()}")

    if args.path != "auto":
        forced = args.path == "per-head"
        _grid.per_head_matmuls = lambda device, head_flops: forced and torch.device(device).type == "cpu"
    head_flops = _grid.head_step_flops(args.batch_size, X.shape[1], len(np.unique(y)))
    per_head = _grid.per_head_matmuls(args.device, head_flops)
    tiny = per_head or (torch.device(args.device).type == "cpu" and 13 * head_flops <= _grid.SMALL_STEP_FLOPS)
    print(f"grid path: {'per-head matmuls (bit-exact)' if per_head else 'one shared GEMM for 13 heads'}; "
          f"thread policy for grid AND plain loop: {'1 thread (tiny steps)' if tiny else f'{args.threads} threads'}")

    kw = dict(iterations=steps, min_iterations=0, batch_size=args.batch_size, select_on="val", device=args.device,
              normalize="none")
    t = time.perf_counter()
    probe = LinearProbe(**kw).fit(X, y, X_val=Xv, y_val=yv)
    t_grid = time.perf_counter() - t
    grid_accs = [h["val_top1"] for h in probe.heads_]

    t = time.perf_counter()
    with _grid.single_thread(tiny):  # the same thread policy as the grid
        loop_accs = plain_loop(X, y, Xv, yv, DINOV3_LRS, args.batch_size, steps, 0, args.device)
    t_loop = time.perf_counter() - t

    print(f"\n{'method':<44}{'time (s)':>10}{'best val top-1':>16}")
    print(f"{'svgfeat LinearProbe (13 heads together)':<44}{t_grid:>10.2f}{max(grid_accs):>16.2f}")
    print(f"{'plain torch loop (13 heads one by one)':<44}{t_loop:>10.2f}{max(loop_accs):>16.2f}")
    diff = max(abs(a - b) for a, b in zip(grid_accs, loop_accs))
    print(f"  per-head |acc(grid) - acc(loop)| max = {diff:.2f} points (same recipe and batch order)")
    if not args.skip_sklearn:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        Cs = (1e-3, 1e-2, 1e-1, 1.0)
        t = time.perf_counter()
        with threadpool_limits(args.threads):
            sk = [LogisticRegression(C=C, max_iter=300).fit(X, y).score(Xv, yv) * 100 for C in Cs]
        t_sk = time.perf_counter() - t
        print(f"{'sklearn LogisticRegression lbfgs (4 Cs)':<44}{t_sk:>10.2f}{max(sk):>16.2f}")
    print(f"\nratio plain loop / grid: {t_loop / t_grid:.2f}x")
    if not args.skip_sklearn:
        print(f"ratio sklearn / grid:    {t_sk / t_grid:.2f}x  (accuracy grid {max(grid_accs):.2f} vs "
              f"sklearn {max(sk):.2f})")


if __name__ == "__main__":
    main()
