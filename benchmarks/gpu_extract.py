"""GPU extraction throughput (run on the device machine; a few minutes).

Synthetic JPEG folder (ImageNet-like 500x375 crops of real photos), SVG-S+ sized encoder (random
weights, or the golden/real files when given) at 256 px: images/s for CPU (PIL) decode vs device
(nvJPEG) decode, fp32 vs bf16 autocast, plus peak GPU memory. Target: >= 8,000 img/s for SVG-S+ at
256 on one H200 with device decode.

    python benchmarks/gpu_extract.py [--n 20000] [--batch 512] [--workers 12] [--device cuda]
    python benchmarks/gpu_extract.py --device cpu --n 64 --batch 16 --workers 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import photo_folder  # noqa: E402


def run(folder, enc, args, gpu_decode, bf16, out):
    from svgfeat.extraction import extract

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t = time.perf_counter()
    c = extract(folder, out, encoder=enc, size=args.size, batch_size=args.batch, shard_size=args.shard,
                workers=args.workers, device=args.device, progress=False, gpu_decode=gpu_decode, precision="bf16" if bf16 else "fp32",
                groups=["latent", "cls", "pooled"])
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    mem = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    return {"n": len(c), "seconds": round(dt, 2), "img_s": round(len(c) / dt, 1), "peak_gpu_gib": round(mem, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--shard", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dinov3", default=None)
    ap.add_argument("--svg", default=None)
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    import svgfeat

    if args.dinov3:
        enc = svgfeat.load_encoder(dinov3=args.dinov3, svg=args.svg, device=args.device)
    else:
        enc = svgfeat.create_model("svg_vits16plus").to(args.device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "jpegs", args.n)
        for name, gd, bf in [("cpu-decode bf16", False, True), ("device-decode bf16", True, True),
                             ("device-decode fp32", True, False)]:
            results[name] = run(folder, enc, args, gd, bf, Path(tmp) / name.replace(" ", "_"))
            print(f"{name:<20} {results[name]}", flush=True)
    base = results["cpu-decode bf16"]["img_s"]
    for k, v in results.items():
        print(f"{k:<20} {v['img_s']:>10.1f} img/s  ratio vs cpu-decode bf16 {v['img_s'] / base:.2f}x  "
              f"peak GPU {v['peak_gpu_gib']} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
