"""GPU timing of the DINOv3 linear-probe recipe with svgfeat's grid probe (self-contained, synthetic data).

Recipe: 13 heads (lrs 1e-5 ... 0.1 scaled by batch/256), SGD momentum 0.9, no weight decay, cosine
schedule, 12,500 iterations at batch 1024 over 1.28M 768-d features (ImageNet-1K train size, [CLS ⊕
mean patch] of a ViT-S/16+) with 1000 classes, stored fp16 on the device as a feature cache would be.
The data are class-conditional Gaussians generated on the device, so nothing has to be downloaded.

    python benchmarks/gpu_probe.py                            # H200: expected well under a minute
    python benchmarks/gpu_probe.py --device cpu --scale 0.01  # smoke test: 12.8k rows, 125 iterations

``--scale`` multiplies the number of rows and iterations. ``--compare`` also times the same recipe
for one head in a plain nn.Linear + torch.optim loop (extrapolated to 13 heads).
"""

from __future__ import annotations

import argparse
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_features(n, dim, classes, device, seed, noise=1.0, chunk=131072):
    """Synthetic features [n, dim] fp16 and labels [n] int64 on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    means = torch.randn(classes, dim, generator=g, device=device) * 0.1
    y = torch.randint(0, classes, (n,), generator=g, device=device)
    X = torch.empty(n, dim, dtype=torch.float16, device=device)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        X[a:b] = (means[y[a:b]] + noise * 0.1 * torch.randn(b - a, dim, generator=g, device=device)).half()
    return X, y


def plain_loop_time(X, y, iters, batch, device):
    head = torch.nn.Linear(X.shape[1], int(y.max()) + 1).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=0.1 * batch / 256, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    gen = torch.Generator().manual_seed(0)
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        idx = torch.randint(0, len(y), (batch,), generator=gen).to(device)
        loss = torch.nn.functional.cross_entropy(head(X[idx].float()), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    sync(device)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of rows and iterations")
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--val-rows", type=int, default=50_000)
    ap.add_argument("--iterations", type=int, default=12_500)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=5.0, help="synthetic noise level (task difficulty)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (faster on Ampere+, less exact)")
    ap.add_argument("--compare", action="store_true", help="also time a plain one-head torch loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from svgfeat.heads.probe import LinearProbe

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32  # script-level choice, reported below
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    n = max(int(args.rows * args.scale), args.classes * 2)
    nv = max(int(args.val_rows * args.scale), args.classes)
    iters = max(int(args.iterations * args.scale), 1)
    t = time.perf_counter()
    X, y = make_features(n + nv, args.dim, args.classes, device, args.seed, noise=args.noise)
    Xv, yv, X, y = X[:nv], y[:nv], X[nv:], y[nv:]
    sync(device)
    print(f"device {name}; train {tuple(X.shape)} fp16, val {tuple(Xv.shape)}, {args.classes} classes; "
          f"data generated in {time.perf_counter() - t:.1f}s")
    print(f"recipe: 13 heads, SGD momentum 0.9, cosine, {iters} iterations at batch {args.batch_size}, "
          f"tf32={'on' if args.tf32 and device.type == 'cuda' else 'off'}")

    probe = LinearProbe(iterations=iters, min_iterations=0, batch_size=args.batch_size, device=device,
                        select_on="val", random_state=args.seed)
    sync(device)
    t = time.perf_counter()
    probe.fit(X, y, X_val=Xv, y_val=yv)
    sync(device)
    total = time.perf_counter() - t
    best = probe.report()["best"]
    print(f"grid probe: {total:.1f}s total ({iters / total:.1f} it/s incl. split + val eval); best head "
          f"{best['head']}: val top-1 {best['top1']:.2f}% top-5 {best['top5']:.2f}%")
    if args.compare:
        k = max(min(iters, 200), 1)
        t1 = plain_loop_time(X, y, k, args.batch_size, device)
        est = t1 * iters / k * 13
        print(f"plain loop, one head: {k} it in {t1:.2f}s -> 13 heads x {iters} it ~ {est:.1f}s "
              f"(ratio {est / total:.1f}x)")
    print(f"TIME {total:.2f}")


if __name__ == "__main__":
    main()
