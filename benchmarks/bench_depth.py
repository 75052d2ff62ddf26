"""Depth head (DINOv3 NYUv2 linear protocol) on the embedded sample:depth set: training cost online vs from a
dense-feature cache on equal work, and the RMSE reached by DINO-only vs full SVG latent features at equal steps
(the SVG paper's DINOv3-vs-SVG comparison, on our sample).

Encoder: the golden full-size SVG (DINOv3-S+/16 + residual ViT, 384 + 8 channels) when ../shared/golden is
present, else test_tiny. Both have RANDOM weights: the RMSE numbers only compare feature groups of this random
encoder on a synthetic set; they say nothing about the real SVG / DINOv3 features on NYUv2.

Part 1 -- equal work, one factor: the same N training images (96 x 96, the whole image is the crop: no crop,
no flip, no brightness jitter on the online side either), the same batch, head, targets (full 96 x 96 depth,
depth_stride 1 on the cached side), lr and steps. Only difference: online encodes every batch with the frozen
encoder; cached reads the features extracted once (extraction time reported separately, with the break-even
step count). Step times are medians after one warm-up step.

Part 2 -- equal steps: two heads trained from one cache (groups "dino" and "latent"), same seed, lr, batch and
steps; evaluated on the features of the val split (cache transform, no TTA) against the mean-train-depth
baseline.

    python benchmarks/bench_depth.py [--n 64] [--batch 8] [--steps 6] [--fit-steps 150] [--threads 1] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
WEIGHTS = dict(dinov3=GOLDEN / "dinov3_vits16plus_random.pth", svg=GOLDEN / "svg_ae_shared.ckpt",
               svg_config=GOLDEN / "svg_ae_shared.yaml")


def encoder_kwargs(tiny: bool):
    if not tiny and all(p.exists() for p in WEIGHTS.values()):
        return {k: str(v) for k, v in WEIGHTS.items()}, "golden full-size SVG (DINOv3-S+/16 + residual, 392 ch), random weights"
    return {"model": "test_tiny"}, "test_tiny (64 + 8 ch), random weights"


def median_step(times) -> float:
    return float(np.median(times[1:]))


def speed(enc, train, batch, steps, tmp):
    from svgfeat.extraction import extract
    from svgfeat.heads.depth import LinearDepthHead

    kw = dict(batch_size=batch, warmup_iters=0, lr=1e-2, max_iters=steps + 1)
    online = LinearDepthHead(enc, crop_size=(96, 96), flip=False, brightness=None, **kw).fit(train)
    with Timer() as t_ext:
        cache = extract(train, Path(tmp) / "train", encoder=enc, groups=("dino", "latent"), preset="resize", size=96,
                        batch_size=batch, progress=False)
    cached = LinearDepthHead(depth_stride=1, **kw).fit(cache, train)
    return median_step(online.step_times_), median_step(cached.step_times_), t_ext.seconds, cache


def groups(enc, cache, train, val, batch, steps, tmp):
    from svgfeat.extraction import extract
    from svgfeat.heads.depth import LinearDepthHead
    from svgfeat.heads.depth_metrics import constant_baseline

    vcache = extract(val, Path(tmp) / "val", encoder=enc, groups=("dino", "latent"), preset="resize", size=96,
                     batch_size=batch, progress=False)
    out = {}
    for group in ("dino", "latent"):
        head = LinearDepthHead(group=group, batch_size=batch, max_iters=steps, warmup_iters=steps // 10, lr=1e-2,
                               seed=0).fit(cache, train)
        out[group] = head.evaluate(vcache, val)
        out[group]["channels"] = head.in_channels_
    out["baseline"] = constant_baseline(head.train_depth_mean_, (val.load_depth(i) for i in range(len(val))))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="training images for the speed part")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per mode (speed part)")
    ap.add_argument("--fit-steps", type=int, default=150, help="training steps per feature group (RMSE part)")
    ap.add_argument("--val", type=int, default=120, help="val images for the RMSE part")
    ap.add_argument("--tiny", action="store_true", help="use test_tiny even when golden weights are present")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: reproducible on a shared 2-core box; 0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    import svgfeat
    from svgfeat.data.depth import open_depth_dataset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    enc_kw, desc = encoder_kwargs(args.tiny)
    enc = svgfeat.load_encoder(**enc_kw)
    train_all, val = open_depth_dataset("sample:depth/train"), open_depth_dataset("sample:depth/val")
    val = val.subset(range(min(args.val, len(val))))
    print(f"command: python benchmarks/bench_depth.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"encoder: {desc}; sample:depth 96x96, batch {args.batch}, {torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        train = train_all.subset(range(min(args.n, len(train_all))))
        online, cached, ext, _ = speed(enc, train, args.batch, args.steps, tmp)
        print(f"[equal work: {len(train)} images, whole 96x96 image, no augmentation, full-res targets, "
              f"{args.steps} timed steps]")
        print(f"  online (load + encode + head step): {1000 * online:8.1f} ms/step")
        print(f"  cached (read features + head step): {1000 * cached:8.1f} ms/step")
        print(f"  ratio online / cached: {online / cached:.1f}x; one-time extraction {ext:.1f} s "
              f"({1000 * ext / len(train):.1f} ms/image) = {ext / max(online - cached, 1e-9):.0f} online steps")
        cache = __import__("svgfeat.extraction", fromlist=["extract"]).extract(
            train_all, Path(tmp) / "full", encoder=enc, groups=("dino", "latent"), preset="resize", size=96,
            batch_size=args.batch, progress=False)
        r = groups(enc, cache, train_all, val, args.batch, args.fit_steps, tmp)
    b = r["baseline"]
    print(f"[equal steps: cached training on {len(train_all)} images, {args.fit_steps} steps, batch {args.batch}, "
          f"lr 1e-2; val {len(val)} images (cache transform, no TTA)]")
    for g in ("dino", "latent"):
        m = r[g]
        print(f"  {g:<6} ({m['channels']:>3} ch): RMSE {m['rmse']:.4f}  AbsRel {m['abs_rel']:.4f}  "
              f"d1 {m['delta1']:.4f}  SILog {m['silog']:.2f}")
    print(f"  mean-depth baseline:  RMSE {b['rmse']:.4f}  AbsRel {b['abs_rel']:.4f}  d1 {b['delta1']:.4f}")
    print(f"  RMSE latent / dino: {r['latent']['rmse'] / r['dino']['rmse']:.3f};  "
          f"dino / baseline {r['dino']['rmse'] / b['rmse']:.3f}, latent / baseline {r['latent']['rmse'] / b['rmse']:.3f}")
    print(f"total {time.time() - t0:.0f} s (shared machine: other jobs were running)")


if __name__ == "__main__":
    main()
