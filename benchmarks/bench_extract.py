"""svgfeat's extraction pipeline vs a plain loop, same images and same model.

Equal work on both sides: the same JPEGs, the same transform (svgfeat's ``svg`` preset: ADM box-halving +
bicubic + centre crop), the same output dtype (fp16 on disk), the same storage (disk) and the same torch
thread count for the encoder (``--threads``, default cores - workers, which is what extraction gives the
encoder while workers decode).
Plain loop (what users write without svgfeat): PIL open -> transform -> model forward one batch at a time
-> np.save fp16 per batch. svgfeat: `svgfeat.extract` (DataLoader workers decoding while the model runs,
fp16 shards streamed to disk). Prints the exact command, images/s of both, the ratio, and peak RSS for N
and 3N images (each in a fresh process) to show memory does not grow with the number of images.

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
    import torch
    from PIL import Image

    from svgfeat.data.transforms import Transform

    tf = Transform("svg", size)  # the same preset svgfeat.extract uses
    files = sorted(Path(folder).glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for b in range(0, len(files), batch):
            x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[b:b + batch]])
            f = enc.encode(x)
            np.save(out / f"latent_{b:06d}.npy", f.latent.numpy().astype(np.float16))  # fp16, like the cache
            np.save(out / f"cls_{b:06d}.npy", f.cls.numpy().astype(np.float16))
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
    torch.set_num_threads(args.threads)  # the same encoder thread count for both pipelines
    enc = load(args.model)
    out = Path(args.out)
    with Timer() as t:
        n = (plain_loop if args.child == "plain" else
             lambda *a: run_svgfeat(*a, workers=args.workers, fast_jpeg=args.child == "svgfeat-fast"))(
            args.folder, enc, args.size, args.batch, out)
    print(json.dumps({"n": n, "seconds": t.seconds, "img_s": n / t.seconds, "peak_rss_mb": peak_rss_mb()}))


def spawn(kind, folder, out, args):
    cmd = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--out", str(out), "--size",
           str(args.size), "--batch", str(args.batch), "--model", args.model, "--workers", str(args.workers), "--threads", str(args.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="test_tiny")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the encoder in both pipelines (default: cores - workers, at least 1)")
    ap.add_argument("--child", default=None)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads is None:
        import os

        args.threads = max(1, (os.cpu_count() or 1) - args.workers)
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
    print("command: python benchmarks/bench_extract.py " + " ".join(sys.argv[1:]))
    print(f"model={args.model} size={args.size} batch={args.batch} workers={args.workers} threads={args.threads} "
          f"n={args.n}; both: svg preset, fp16 to disk")
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
