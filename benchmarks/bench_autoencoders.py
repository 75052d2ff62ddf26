"""The SVG autoencoder family on the same images: original SVG vs SVG-T2I R vs SVG-T2I P, at 256 and 512 px.

For every (family, size): reconstruction PSNR / SSIM / LPIPS through `svgfeat eval-recon` (the documented
command, run in-process), and extraction speed = images/s of ``encoder.encode`` on the same preprocessed batch
(fp32, same threads; median of --repeats timed calls after one warm-up). Ratios are against SVG @ 256 measured
in the same run.

Default weights: the golden *random-weight* fixtures (../shared/golden and ../shared/golden-t2i; the decoders
there are reduced, ch 32 / 1 res block), so PSNR/LPIPS say nothing about quality -- they only show the command
runs end to end for every family; speed compares the encoders (full-size DINOv3 ViT-S/16+ and residual ViTs).
With real weights run the same command with --svg-ckpt/--r-ckpt/--p-ckpt (+ --dinov3).

Note: the original SVG residual encoder has a learned position embedding for 256 px only; svgfeat
bicubically interpolates it at 512 (the official code rejects other sizes), so SVG @ 512 is *not* a trained
configuration. SVG-T2I's residual encoder (RoPE, no absolute position) runs natively at any size.

    python benchmarks/bench_autoencoders.py [--data sample:photos] [--limit 4] [--sizes 256,512] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sample:photos")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lpips", default="auto", choices=["auto", "pretrained", "random", "none"])
    ap.add_argument("--dinov3", default=str(SHARED / "golden" / "dinov3_vits16plus_random.pth"))
    ap.add_argument("--svg-ckpt", default=str(SHARED / "golden" / "svg_ae_shared.ckpt"))
    ap.add_argument("--svg-yaml", default=str(SHARED / "golden" / "svg_ae_shared.yaml"))
    ap.add_argument("--r-ckpt", default=str(SHARED / "golden-t2i" / "svg_autoencoder-R_random.ckpt"))
    ap.add_argument("--r-yaml", default=str(SHARED / "golden-t2i" / "svg_autoencoder_R_random.yaml"))
    ap.add_argument("--p-ckpt", default=str(SHARED / "golden-t2i" / "svg_autoencoder-P_random.ckpt"))
    ap.add_argument("--p-yaml", default=str(SHARED / "golden-t2i" / "svg_autoencoder_P_random.yaml"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from click.testing import CliRunner

    import svgfeat
    from svgfeat.cli import cli
    from svgfeat.data import open_dataset

    families = [("svg", args.svg_ckpt, args.svg_yaml), ("t2i-r", args.r_ckpt, args.r_yaml),
                ("t2i-p", args.p_ckpt, args.p_yaml)]
    sizes = [int(s) for s in args.sizes.split(",")]
    ds = open_dataset(args.data)
    n = min(args.limit, len(ds))
    imgs = [ds.load(i) for i in range(n)]
    random_weights = "random" in Path(args.dinov3).name
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam, ckpt, yaml in families:
            enc = svgfeat.load_encoder(dinov3=args.dinov3, svg=ckpt, svg_config=yaml or None, device=args.device)
            assert enc.family == fam, (enc.family, fam)
            for size in sizes:
                x = svgfeat.preprocess(imgs, preset="svg", size=size).to(args.device)
                enc.encode(x)  # warm-up
                ts = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    enc.encode(x)
                    ts.append(time.perf_counter() - t0)
                out = Path(tmp) / f"{fam}_{size}.json"
                cmd = ["eval-recon", args.data, "--dinov3", args.dinov3, "--svg", ckpt, "--size", size,
                       "--batch-size", n, "--limit", n, "--lpips", args.lpips, "--sheet", "", "--json", out,
                       "--no-progress", "--device", args.device]
                if yaml:
                    cmd += ["--svg-config", yaml]
                r = CliRunner().invoke(cli, [str(c) for c in cmd], catch_exceptions=False)
                if r.exit_code != 0:
                    raise SystemExit(f"eval-recon failed for {fam} @ {size}: {r.output}")
                m = json.loads(out.read_text())
                rows.append(dict(family=fam, size=size, channels=enc.latent_channels,
                                 img_s=n / statistics.median(ts), psnr=m["psnr"], ssim=m["ssim"],
                                 lpips=m.get("lpips")))
            del enc
    base = next(r for r in rows if r["family"] == "svg" and r["size"] == sizes[0])["img_s"]
    print(f"# {n} images of {args.data}, fp32, {args.threads} threads, device {args.device}; "
          f"weights: {'golden RANDOM weights (quality numbers meaningless)' if random_weights else args.dinov3}")
    print("| family | size | latent ch | encode img/s | vs SVG@%d | PSNR dB | SSIM | LPIPS |" % sizes[0])
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lp = "n/a" if r["lpips"] is None else f"{r['lpips']:.4f}"
        print(f"| {r['family']} | {r['size']} | {r['channels']} | {r['img_s']:.2f} | {r['img_s'] / base:.2f}x | "
              f"{r['psnr']:.2f} | {r['ssim']:.4f} | {lp} |")
    if any(r["lpips"] is None for r in rows):
        print("LPIPS n/a: no LPIPS/VGG weights found (eval-recon --lpips auto skips it; --lpips random only checks "
              "the plumbing)")
    if 256 not in sizes or len(sizes) > 1:
        print("svg at sizes other than 256: residual position embedding bicubically interpolated (untrained setting)")


if __name__ == "__main__":
    main()
