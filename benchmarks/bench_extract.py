"""svgfeat's extraction pipeline vs a plain loop, same images and same model.

Plain loop (what users write without svgfeat): PIL open -> timm transform -> model forward one batch at
a time -> np.save per batch. svgfeat: `svgfeat.extract` (DataLoader workers decoding while the model
runs, fp16 shards streamed to disk). Prints images/s of both, the ratio, and peak RSS for N and 3N
images (each in a fresh process) to show memory does not grow with the number of images.

    python benchmarks/bench_extract.py [--n 384] [--size 128] [--workers 2] [--model test_tiny|golden]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, peak_rss_mb, photo_folder  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


def load(model):
    import svgfeat

    if model == "golden" and (GOLDEN / "svg_ae_shared.ckpt").exists():
        return svgfeat.load_encoder(dinov3=GOLDEN / "dinov3_vits16plus_random.pth", svg=GOLDEN / "svg_ae_shared.ckpt",
                                    svg_config=GOLDEN / "svg_ae_shared.yaml")
    return svgfeat.create_model("test_tiny")


def plain_loop(folder, enc, size, batch, out):
    import numpy as np
    import timm.data
    import torch
    from PIL import Image

    tf = timm.data.create_transform(input_size=(3, size, size), interpolation="bicubic", crop_pct=1.0,
                                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    files = sorted(Path(folder).glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for b in range(0, len(files), batch):
            x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[b:b + batch]])
            f = enc.encode(x)
            np.save(out / f"latent_{b:06d}.npy", f.latent.numpy())
            np.save(out / f"cls_{b:06d}.npy", f.cls.numpy())
    return len(files)


def run_svgfeat(folder, enc, size, batch, out, workers, fast_jpeg=False):
    import svgfeat

    c = svgfeat.extract(folder, out, encoder=enc, size=size, batch_size=batch, shard_size=256, workers=workers,
                        groups=["latent", "cls"], progress=False, fast_jpeg=fast_jpeg)
    return len(c)


def child(args):
    """Measure one pipeline in this (fresh) process; prints JSON."""
    import torch

    torch.manual_seed(0)
    enc = load(args.model)
    out = Path(args.out)
    with Timer() as t:
        n = (plain_loop if args.child == "plain" else
             lambda *a: run_svgfeat(*a, workers=args.workers, fast_jpeg=args.child == "svgfeat-fast"))(
            args.folder, enc, args.size, args.batch, out)
    print(json.dumps({"n": n, "seconds": t.seconds, "img_s": n / t.seconds, "peak_rss_mb": peak_rss_mb()}))


def spawn(kind, folder, out, args):
    cmd = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--out", str(out), "--size",
           str(args.size), "--batch", str(args.batch), "--model", args.model, "--workers", str(args.workers)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="test_tiny")
    ap.add_argument("--child", default=None)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = photo_folder(tmp / "small", args.n)
        large = photo_folder(tmp / "large", 3 * args.n, seed=1)
        plain = spawn("plain", small, tmp / "plain", args)
        ours = spawn("svgfeat", small, tmp / "ours", args)
        fast = spawn("svgfeat-fast", small, tmp / "fast", args)
        ours_large = spawn("svgfeat", large, tmp / "ours_large", args)
    print(f"model={args.model} size={args.size} batch={args.batch} workers={args.workers} n={args.n}")
    print(f"plain loop : {plain['img_s']:8.2f} img/s   peak RSS {plain['peak_rss_mb']:.0f} MB")
    print(f"svgfeat    : {ours['img_s']:8.2f} img/s   peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"svgfeat --fast-jpeg: {fast['img_s']:8.2f} img/s")
    print(f"ratio svgfeat/plain = {ours['img_s'] / plain['img_s']:.2f}x   "
          f"(with --fast-jpeg {fast['img_s'] / plain['img_s']:.2f}x)")
    print(f"peak RSS svgfeat: {ours['peak_rss_mb']:.0f} MB for {args.n} images, "
          f"{ours_large['peak_rss_mb']:.0f} MB for {3 * args.n} images "
          f"(growth {ours_large['peak_rss_mb'] - ours['peak_rss_mb']:+.0f} MB)")


if __name__ == "__main__":
    main()
