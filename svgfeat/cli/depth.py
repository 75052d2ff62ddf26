"""`svgfeat depth train|eval|predict`: the native linear depth head (DINOv3 NYUv2 linear protocol).

Defaults follow the protocol (416 x 544 crops, 38.4k iterations, 12.8k warm-up, lr 3e-4, batch 16, flip TTA);
for the embedded ``sample:depth`` set they shrink to its 96-px images (96 x 96 crops, 150 iterations, lr 1e-2,
batch 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from ._common import build_encoder, encoder_options
from ._types import GRAD_CLIP, LIMIT, LR, POSITIVE, SEED, SIZE, WEIGHT_DECAY, WORKERS, Real

PROTOCOL = dict(crop=(416, 544), iters=38400, warmup=12800, lr=3e-4, batch_size=16)
SAMPLE = dict(crop=(96, 96), iters=150, warmup=15, lr=1e-2, batch_size=8)
KEYS = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")


def _defaults(data: str) -> dict:
    return SAMPLE if str(data).startswith("sample:") else PROTOCOL


def _open(data: str, split: str, depth_scale=None, split_file=None):
    from ..data.depth import open_depth_dataset

    if str(data).startswith("sample:"):  # sample:depth[/train] -> the requested split
        return open_depth_dataset(f"{str(data).split('/')[0]}/{'val' if split == 'test' else split}")
    return open_depth_dataset(data, split=split, depth_scale=depth_scale, split_file=split_file)


def _limit(ds, limit):
    return ds.subset(range(min(int(limit), len(ds)))) if limit else ds


def _fmt(r: dict) -> str:
    return (f"RMSE {r['rmse']:.4f}  AbsRel {r['abs_rel']:.4f}  log10 {r['log10']:.4f}  SILog {r['silog']:.2f}  "
            f"d1 {r['delta1']:.4f}  d2 {r['delta2']:.4f}  d3 {r['delta3']:.4f}")


def _baseline(head, ds) -> dict:
    from ..heads.depth_metrics import constant_baseline

    return constant_baseline(head.train_depth_mean_, (ds.load_depth(i) for i in range(len(ds))),
                             float(head.min_depth), float(head.max_depth), head._crop_for(ds))


def _crop_option(v: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in v.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ConfigError(f"crop size {v!r}: expected H,W (e.g. 416,544) or one integer")
    return parts[0], parts[1]


data_options = [
    click.option("--depth-scale", type=Real(0, 1e6, "raw units per metre", lo_open=True), default=None,
                 help="Raw depth units per metre (default 1000 for PNG = millimetres, 1 for .npy = metres)."),
    click.option("--split-file", type=click.Path(dir_okay=False), default=None,
                 help="List file 'rgb depth [focal]' per line (default: NYUv2's nyudepthv2_*_files_with_gt.txt)."),
]


def _data_options(f):
    for opt in reversed(data_options):
        f = opt(f)
    return f


@click.group()
def depth():
    """Monocular depth with a linear head on SVG / DINOv3 patch features (NYUv2 protocol)."""


@depth.command()
@click.option("--data", required=True, help="NYUv2 root, images/+depth/ folder, or sample:depth.")
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--val-split", default="val", show_default=True, help="Split evaluated after training "
              "(NYUv2: the 654-image Eigen test split).")
@_data_options
@click.option("--val-split-file", type=click.Path(dir_okay=False), default=None, help="List file of the val split.")
@encoder_options
@click.option("--group", type=click.Choice(["latent", "dino"]), default="latent", show_default=True,
              help="latent = DINOv3 + residual channels; dino = DINOv3 only.")
@click.option("--cached", is_flag=True, help="Train from a dense-feature cache (fast, no augmentation).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the cache lives / is extracted (default OUT/cache).")
@click.option("--cache-size", type=SIZE, default=None,
              help="Square side the cache resizes images to (default: the sample's 96; 480 otherwise).")
@click.option("--iters", type=POSITIVE, default=None, help="Training iterations (38400; 150 for the sample).")
@click.option("--batch-size", type=POSITIVE, default=None, help="Batch size (16; 8 for the sample).")
@click.option("--lr", type=LR, default=None, help="AdamW learning rate (3e-4; 1e-2 for the sample).")
@click.option("--weight-decay", type=WEIGHT_DECAY, default=1e-4, show_default=True)
@click.option("--grad-clip", type=GRAD_CLIP, default=35.0, show_default=True, help="Gradient-norm clip (0: off).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Warm-up iterations (12800; 15 for the sample).")
@click.option("--crop-size", default=None, help="Training crop H,W (416,544; 96,96 for the sample).")
@click.option("--bins", "n_bins", type=click.IntRange(min=2), default=256, show_default=True, help="Depth bins.")
@click.option("--min-depth", type=Real(0, 1e4, "a depth in metres", lo_open=True), default=1e-3, show_default=True)
@click.option("--max-depth", type=Real(0, 1e4, "a depth in metres", lo_open=True), default=10.0, show_default=True)
@click.option("--no-tta", is_flag=True, help="Evaluate without flip test-time augmentation.")
@click.option("--workers", type=WORKERS, default=0, show_default=True, help="DataLoader workers (online mode).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--eval-limit", type=LIMIT, default=None, help="Evaluate on the first N validation images only.")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation after training.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
def train(data, split, val_split, depth_scale, split_file, val_split_file, dinov3, svg, svg_config, model,
          alignment, device, group, cached, cache_dir, cache_size, iters, batch_size, lr, weight_decay, grad_clip,
          warmup, crop_size, n_bins, min_depth, max_depth, no_tta, workers, seed, eval_limit, no_eval, out):
    """Train a linear depth head; writes OUT/head.safetensors (+ .json) and OUT/metrics.json."""
    from ..heads.depth import LinearDepthHead

    d = _defaults(data)
    out = Path(out)
    crop = _crop_option(crop_size) if crop_size else d["crop"]
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    ds = _open(data, split, depth_scale, split_file)
    head = LinearDepthHead(
        enc, group=group, n_bins=n_bins, min_depth=min_depth, max_depth=max_depth, lr=lr or d["lr"],
        weight_decay=weight_decay, grad_clip=grad_clip or None, max_iters=iters or d["iters"],
        batch_size=batch_size or d["batch_size"], warmup_iters=d["warmup"] if warmup is None else warmup,
        crop_size=crop, slide_crop=crop, slide_stride=(max(1, crop[0] // 2), max(1, crop[1] // 2)),
        tta=not no_tta, device=device, workers=workers, seed=seed, verbose=True)
    if cached:
        size = cache_size or (96 if str(data).startswith("sample:") else 480)
        cache = _extract_for(ds, enc, Path(cache_dir) if cache_dir else out / "cache" / split, size, device)
        click.echo(f"training from cache {cache.root} ({len(cache)} rows)")
        head.fit(cache, ds)
    else:
        click.echo(f"training online on {len(ds)} images of {ds.spec}")
        head.fit(ds)
    path = head.save(out / "head.safetensors")
    click.echo(f"wrote {path}")
    metrics = {"train": {"data": str(data), "split": split, "iters": head.n_iter_, "mode": head.mode_,
                         "group": group, "final_loss": head.history_[-1] if head.history_ else None,
                         "train_depth_mean": head.train_depth_mean_}}
    if not no_eval:
        val = _limit(_open(data, val_split, depth_scale, val_split_file), eval_limit)
        r, base = head.evaluate(val), _baseline(head, val)
        click.echo(f"{val.spec} ({len(val)} images, crop {r['eval_crop']}, tta {r['tta']}): {_fmt(r)}")
        click.echo(f"mean-depth baseline ({base['value']:.3f} m everywhere): {_fmt(base)}")
        metrics.update({k: r[k] for k in KEYS})
        metrics["baseline_rmse"] = base["rmse"]
        metrics["val"] = {"data": val.spec, "images": r["images"], "eval_crop": r["eval_crop"], "tta": r["tta"],
                          **{k: r[k] for k in KEYS}}
        metrics["baseline"] = {"value": base["value"], **{k: base[k] for k in KEYS}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _extract_for(ds, enc, cache_dir: Path, size: int, device):
    """Dense-feature cache of ``ds`` with every image resized to ``size`` x ``size`` (preset 'resize')."""
    from ..extraction import extract

    if size % 16:
        raise ConfigError(f"--cache-size must be a multiple of 16, got {size}")
    click.echo(f"extracting dense features (resize {size}px) to {cache_dir}")
    return extract(ds, cache_dir, encoder=enc, groups=("dino", "latent"), size=size, preset="resize",
                   device=device, alignment=enc.alignment or "batch", progress=True)


def _load_head(head_path, enc, device):
    from ..extraction import encoder_spec
    from ..heads.depth import LinearDepthHead

    head = LinearDepthHead.load(head_path, encoder=enc, device=device)
    want, have = head.encoder_spec_ or {}, encoder_spec(enc)
    diffs = [k for k in ("model", "dinov3_sha256", "svg_sha256") if want.get(k) != have.get(k)]
    if diffs:
        click.echo(f"warning: the head was trained with a different encoder ({', '.join(diffs)} differ)", err=True)
    return head


@depth.command("eval")
@click.option("--data", required=True, help="NYUv2 root, images/+depth/ folder, or sample:depth.")
@click.option("--split", default="val", show_default=True, help="val/test = NYUv2's Eigen test split.")
@_data_options
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("--inference", type=click.Choice(["whole", "slide"]), default=None, help="Default: the head's.")
@click.option("--eval-crop", type=click.Choice(["auto", "eigen", "none"]), default="auto", show_default=True,
              help="auto: Eigen crop for NYUv2, none otherwise.")
@click.option("--no-tta", is_flag=True, help="No flip test-time augmentation.")
@click.option("--limit", type=LIMIT, default=None, help="Evaluate the first N images only.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here.")
def eval_cmd(data, split, depth_scale, split_file, head_path, dinov3, svg, svg_config, model, alignment, device,
             inference, eval_crop, no_tta, limit, json_out):
    """Evaluate a trained head: RMSE, AbsRel, log10, SILog, delta1-3 (mean over images)."""
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    head = _load_head(head_path, enc, device)
    head.set_params(eval_crop=eval_crop, tta=not no_tta, **({"inference": inference} if inference else {}))
    ds = _limit(_open(data, split, depth_scale, split_file), limit)
    r = head.evaluate(ds)
    click.echo(f"{ds.spec} ({r['images']} images, crop {r['eval_crop']}, tta {r['tta']}): {_fmt(r)}")
    base = _baseline(head, ds) if head.train_depth_mean_ is not None else None
    if base:
        click.echo(f"mean-depth baseline ({base['value']:.3f} m everywhere): {_fmt(base)}")
    if json_out:
        Path(json_out).write_text(json.dumps({"metrics": r, "baseline": base, "data": str(data), "split": split},
                                             indent=2))


@depth.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--max-display-depth", type=Real(0, 1e4, "a depth in metres", lo_open=True), default=None,
              help="Depth mapped to the last colour (default: the head's max depth).")
@click.option("--no-tta", is_flag=True, help="No flip test-time augmentation.")
def predict(images, head_path, dinov3, svg, svg_config, model, alignment, device, out, max_display_depth, no_tta):
    """Predict depth for IMAGES (paths, or sample:depth/val); writes <stem>_depth.png (colour map),
    <stem>_side.png (image | depth) and <stem>_depth_mm.png (uint16 millimetres) to OUT."""
    import numpy as np
    from PIL import Image

    from ..data.depth import open_depth_dataset
    from ..data.segmentation import to_pil
    from ..heads.depth import colorize

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    head = _load_head(head_path, enc, device)
    if len(images) == 1 and images[0].startswith("sample:"):
        ds = open_depth_dataset(images[0])
        items = [(ds.load(i), Path(ds.paths[i]).name) for i in range(len(ds))]
    else:
        items = [(to_pil(p), Path(p).stem) for p in images]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vmax = float(max_display_depth or head.max_depth)
    for img, stem in items:
        d = head.image_depth(img, tta=not no_tta)
        colour = colorize(d, 0.0, vmax)
        Image.fromarray(colour).save(out / f"{stem}_depth.png")
        Image.fromarray(np.concatenate([np.asarray(img), colour], axis=1)).save(out / f"{stem}_side.png")
        Image.fromarray(np.clip(np.round(d * 1000), 0, 65535).astype(np.uint16)).save(out / f"{stem}_depth_mm.png")
        click.echo(f"{stem}: depth {d.min():.2f}-{d.max():.2f} m (median {np.median(d):.2f})")
    click.echo(f"wrote {3 * len(items)} PNG file(s) to {out}")
