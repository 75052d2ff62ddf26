"""`svgfeat seg train|eval|predict`: the native linear segmentation head (DINOv3 ADE20K protocol).

Defaults follow the protocol (512 crops, 40k iterations, 1500 warm-up, sliding window 512/341); for the
embedded ``sample:digitseg`` set they shrink to its 64-px images (64 crops, 300 iterations, window 64/48).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from ._common import build_encoder, encoder_options, png_bytes, write_output
from ._types import CROP, LIMIT, LR, POSITIVE, SEED, WEIGHT_DECAY, WORKERS, Count, Real

PROTOCOL = dict(crop_size=512, iters=40000, warmup=1500, slide_crop=512, slide_stride=341)
SAMPLE = dict(crop_size=64, iters=300, warmup=30, slide_crop=64, slide_stride=48)


def _defaults(data: str) -> dict:
    return SAMPLE if str(data).startswith("sample:") else PROTOCOL


def _open(data: str, split: str):
    from ..data.segmentation import open_seg_dataset

    if str(data).startswith("sample:"):  # sample:digitseg[/train] -> the requested split
        return open_seg_dataset(f"{str(data).split('/')[0]}/{split}")
    return open_seg_dataset(data, split=split)


def _limit(ds, limit):
    return ds.subset(range(min(int(limit), len(ds)))) if limit else ds


def _fmt(r: dict) -> str:
    return f"mIoU {100 * r['mIoU']:.2f}  mAcc {100 * r['mAcc']:.2f}  aAcc {100 * r['aAcc']:.2f}"


def _pct(v) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}"


def _warn_encoder(head, enc) -> None:
    from ..extraction import encoder_spec

    want, have = head.encoder_spec_ or {}, encoder_spec(enc)
    diffs = [k for k in ("model", "dinov3_sha256", "svg_sha256") if want.get(k) != have.get(k)]
    if diffs:
        click.echo(f"warning: the head was trained with a different encoder ({', '.join(diffs)} differ: "
                   f"{ {k: want.get(k) for k in diffs} } vs { {k: have.get(k) for k in diffs} })", err=True)


@click.group()
def seg():
    """Semantic segmentation with a linear head on SVG / DINOv3 patch features."""


@seg.command()
@click.option("--data", required=True, help="ADE20K root, images/+masks/ folder, or sample:digitseg.")
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--val-split", default="val", show_default=True, help="Split evaluated after training.")
@encoder_options
@click.option("--head", "head_kind", type=click.Choice(["linear"]), default="linear", show_default=True)
@click.option("--group", type=click.Choice(["latent", "dino"]), default="latent", show_default=True,
              help="latent = DINOv3 + residual channels; dino = DINOv3 only.")
@click.option("--cached", is_flag=True, help="Train from a dense-feature cache (fast, no augmentation).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the cache lives / is extracted (default OUT/cache).")
@click.option("--iters", type=POSITIVE, default=None, help="Training iterations (40000; 300 for the sample).")
@click.option("--batch-size", type=POSITIVE, default=16, show_default=True)
@click.option("--lr", type=LR, default=1e-3, show_default=True)
@click.option("--weight-decay", type=WEIGHT_DECAY, default=1e-3, show_default=True)
@click.option("--warmup", type=Count(0, "a number of iterations"), default=None, help="Warm-up iterations (1500; 30 for the sample).")
@click.option("--schedule", type=click.Choice(["cosine", "poly"]), default="cosine", show_default=True)
@click.option("--crop-size", type=CROP, default=None, help="Training crop (512; 64 for the sample).")
@click.option("--base-size", type=POSITIVE, default=None, help="Short side before scale jitter (default crop size).")
@click.option("--slide-crop", type=CROP, default=None)
@click.option("--slide-stride", type=POSITIVE, default=None)
@click.option("--workers", type=WORKERS, default=0, show_default=True, help="DataLoader workers (online mode).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--eval-limit", type=LIMIT, default=None, help="Evaluate on the first N validation images only.")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation after training.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
def train(data, split, val_split, dinov3, svg, svg_config, model, alignment, device, head_kind, group, cached,
          cache_dir, iters, batch_size, lr, weight_decay, warmup, schedule, crop_size, base_size, slide_crop,
          slide_stride, workers, seed, eval_limit, no_eval, out):
    """Train a linear head; writes OUT/head.safetensors (+ .json) and OUT/metrics.json."""
    from .. import distributed as D

    info, dev = D.setup(device)  # torchrun: rank r on cuda:LOCAL_RANK, each rank trains on its slice of the batch
    try:
        _train(data, split, val_split, dinov3, svg, svg_config, model, alignment, str(dev), head_kind, group, cached,
               cache_dir, iters, batch_size, lr, weight_decay, warmup, schedule, crop_size, base_size, slide_crop,
               slide_stride, workers, seed, eval_limit, no_eval, out, info)
    finally:
        D.teardown(info)


def _train(data, split, val_split, dinov3, svg, svg_config, model, alignment, device, head_kind, group, cached,
           cache_dir, iters, batch_size, lr, weight_decay, warmup, schedule, crop_size, base_size, slide_crop,
           slide_stride, workers, seed, eval_limit, no_eval, out, info):
    from .. import distributed as D
    from ..heads.segmentation import LinearSegHead

    d = _defaults(data)
    out = Path(out)
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    ds = _open(data, split)
    head = LinearSegHead(
        enc, group=group, lr=lr, weight_decay=weight_decay, max_iters=iters or d["iters"], batch_size=batch_size,
        warmup_iters=d["warmup"] if warmup is None else warmup, schedule=schedule,
        crop_size=crop_size or d["crop_size"], base_size=base_size, slide_crop=slide_crop or d["slide_crop"],
        slide_stride=slide_stride or d["slide_stride"], device=device, workers=workers, seed=seed,
        verbose=info.is_main)
    head.dist_ = info
    if batch_size % info.world:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the {info.world} torchrun ranks")
    if cached:
        cache = _extract_for(ds, enc, Path(cache_dir) if cache_dir else out / "cache" / split,
                             crop_size or d["crop_size"], device)
        click.echo(f"training from cache {cache.root} ({len(cache)} rows)")
        head.fit(cache, ds)
    else:
        click.echo(f"training online on {len(ds)} images of {ds.spec}")
        head.fit(ds)
    if not info.is_main:  # rank 0 saves and evaluates
        D.barrier(info)
        return
    path = head.save(out / "head.safetensors")
    click.echo(f"wrote {path}")
    metrics = {"train": {"data": str(data), "split": split, "iters": head.n_iter_, "mode": head.mode_,
                         "final_loss": head.history_[-1] if head.history_ else None}}
    if not no_eval:
        try:
            val = _limit(_open(data, val_split), eval_limit)
        except Exception as e:  # no validation split: report and keep the trained head
            click.echo(f"no evaluation ({e})", err=True)
        else:
            r = head.evaluate(val)
            click.echo(f"{val.spec} ({len(val)} images): {_fmt(r)}")
            metrics["val"] = {k: r[k] for k in ("mIoU", "mAcc", "aAcc", "IoU", "Acc", "classes")}
    write_output(out / "metrics.json", json.dumps(metrics, indent=2))
    D.barrier(info)


def _extract_for(ds, enc, cache_dir: Path, crop_size: int, device):
    """Dense-feature cache of ``ds``: native size when every image is the same multiple of 16, else resize."""
    from PIL import Image

    from ..extraction import extract

    def size_of(i):
        if str(ds.root).startswith("sample:"):
            return ds.load(i).size
        with Image.open(ds.abspath(i)) as im:  # header only
            return im.size

    sizes = {size_of(i) for i in range(len(ds))}
    w, h = next(iter(sizes))
    native = len(sizes) == 1 and w == h and w % 16 == 0
    preset, size = ("none", w) if native else ("resize", crop_size)
    click.echo(f"extracting dense features ({preset} {size}px) to {cache_dir}")
    return extract(ds, cache_dir, encoder=enc, groups=("dino", "latent"), size=size, preset=preset,
                   device=device, alignment=enc.alignment or "batch", progress=True)


@seg.command("eval")
@click.option("--data", required=True, help="ADE20K root, images/+masks/ folder, or sample:digitseg.")
@click.option("--split", default="val", show_default=True)
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("--inference", type=click.Choice(["slide", "whole"]), default=None, help="Default: the head's.")
@click.option("--slide-crop", type=CROP, default=None)
@click.option("--slide-stride", type=POSITIVE, default=None)
@click.option("--limit", type=LIMIT, default=None, help="Evaluate the first N images only.")
@click.option("--per-class", is_flag=True, help="Also print per-class IoU / Acc.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here.")
def eval_cmd(data, split, head_path, dinov3, svg, svg_config, model, alignment, device, inference, slide_crop,
             slide_stride, limit, per_class, json_out):
    """Evaluate a trained head (mIoU / mAcc / aAcc, sliding-window inference on the original images)."""
    from ..heads.seg_metrics import majority_baseline
    from ..heads.segmentation import LinearSegHead

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    head = LinearSegHead.load(head_path, encoder=enc, device=device)
    _warn_encoder(head, enc)
    head.set_params(**{k: v for k, v in dict(inference=inference, slide_crop=slide_crop,
                                             slide_stride=slide_stride).items() if v is not None})
    ds = _limit(_open(data, split), limit)
    if ds.num_classes != head.num_classes_:
        raise ConfigError(f"the dataset has {ds.num_classes} classes but the head predicts {head.num_classes_}")
    r = head.evaluate(ds)
    base = majority_baseline((ds.load_mask(i) for i in range(len(ds))), ds.num_classes, ds.ignore_index)
    click.echo(f"{ds.spec} ({len(ds)} images): {_fmt(r)}")
    click.echo(f"majority-class baseline (class {base['class']}): {_fmt(base)}")
    if per_class:
        for name, iou, acc in zip(r["classes"], r["IoU"], r["Acc"]):
            click.echo(f"  {name:<24} IoU {_pct(iou)}  Acc {_pct(acc)}")
    if json_out:
        write_output(json_out, json.dumps({"metrics": r, "baseline": base, "data": str(data), "split": split},
                                          indent=2))


@seg.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--alpha", type=Real(0, 1, "an opacity"), default=0.5, show_default=True, help="Mask opacity in the overlay.")
def predict(images, head_path, dinov3, svg, svg_config, model, alignment, device, out, alpha):
    """Segment IMAGES (paths, or sample:digitseg/val); writes <stem>_labels/_mask/_overlay.png to OUT."""
    import numpy as np
    from PIL import Image

    from ..data.segmentation import color_palette, open_seg_dataset, to_pil
    from ..heads.segmentation import LinearSegHead

    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    head = LinearSegHead.load(head_path, encoder=enc, device=device)
    _warn_encoder(head, enc)
    if len(images) == 1 and images[0].startswith("sample:"):
        ds = open_seg_dataset(images[0])
        items = [(ds.load(i), Path(ds.paths[i]).name) for i in range(len(ds))]
    else:
        items = [(to_pil(p), Path(p).stem) for p in images]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = color_palette(max(head.num_classes_, 1))
    for img, stem in items:
        labels = head.predict([img])[0]
        colour = palette[labels]
        base = np.asarray(img, dtype=np.float32)
        overlay = (base * (1 - alpha) + colour.astype(np.float32) * alpha).round().clip(0, 255).astype(np.uint8)
        mode = "L" if head.num_classes_ <= 256 else "I"
        write_output(out / f"{stem}_labels.png",
                     png_bytes(Image.fromarray(labels.astype(np.uint8 if mode == "L" else np.int32), mode)))
        write_output(out / f"{stem}_mask.png", png_bytes(Image.fromarray(colour)))
        write_output(out / f"{stem}_overlay.png", png_bytes(Image.fromarray(overlay)))
        present = [head.classes_[c] for c in np.unique(labels)]
        click.echo(f"{stem}: {', '.join(present[:8])}{' ...' if len(present) > 8 else ''}")
    click.echo(f"wrote {3 * len(items)} PNG file(s) to {out}")
