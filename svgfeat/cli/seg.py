"""`svgfeat seg train|eval|predict`: the native linear segmentation head (DINOv3 ADE20K protocol).

Defaults are the protocol presets of :mod:`svgfeat.evaluation.protocols` (``ade20k-linear``; for the embedded
``sample:digitseg`` set ``digitseg-sample``); the runs are :mod:`svgfeat.evaluation.dense`.
"""

from __future__ import annotations

import functools

import click

from ._common import build_encoder, encoder_options, overwrite_option, precision_option
from ._types import CROP, LIMIT, LR, POSITIVE, SEED, WEIGHT_DECAY, WORKERS, Count, Real

DATA_HELP = "ADE20K root, images/+masks/ folder, or sample:digitseg."


def _warn(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def seg():
    """Semantic segmentation with a linear head on SVG / DINOv3 patch features."""


@seg.command()
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--val-split", default="val", show_default=True, help="Split evaluated after training.")
@encoder_options
@click.option("--head", "head_kind", type=click.Choice(["linear"]), default="linear", show_default=True)
@click.option("--group", type=click.Choice(["latent", "dino"]), default="latent", show_default=True,
              help="latent = DINOv3 + residual channels; dino = DINOv3 only.")
@click.option("--cached", is_flag=True, help="Train from a dense-feature cache (fast, no augmentation).")
@precision_option()
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the cache lives / is extracted (default OUT/cache).")
@click.option("--iters", type=POSITIVE, default=None, help="Training iterations (40000; 300 for the sample).")
@click.option("--batch-size", type=POSITIVE, default=None, help="Global batch size (16), split over torchrun ranks.")
@click.option("--lr", type=LR, default=None, help="AdamW learning rate (1e-3).")
@click.option("--weight-decay", type=WEIGHT_DECAY, default=None, help="AdamW weight decay (1e-3).")
@click.option("--warmup", type=Count(0, "a number of iterations"), default=None, help="Warm-up iterations (1500; 30 for the sample).")
@click.option("--schedule", type=click.Choice(["cosine", "poly"]), default=None, help="lr decay (cosine).")
@click.option("--crop-size", type=CROP, default=None, help="Training crop (512; 64 for the sample).")
@click.option("--base-size", type=POSITIVE, default=None, help="Short side before scale jitter (default crop size).")
@click.option("--slide-crop", type=CROP, default=None)
@click.option("--slide-stride", type=POSITIVE, default=None)
@click.option("--workers", type=WORKERS, default=0, show_default=True, help="DataLoader workers (online mode).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--eval-limit", type=LIMIT, default=None, help="Evaluate on the first N validation images only.")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation after training.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@overwrite_option
def train(data, split, val_split, dinov3, svg, svg_config, model, alignment, device, head_kind, group, cached,
          precision, cache_dir, iters, batch_size, lr, weight_decay, warmup, schedule, crop_size, base_size,
          slide_crop, slide_stride, workers, seed, eval_limit, no_eval, out, overwrite):
    """Train a linear head; writes OUT/head.safetensors (+ .json) and OUT/metrics.json (torchrun: data parallel)."""
    from ..evaluation.dense import train_dense

    make = functools.partial(build_encoder, dinov3, svg, svg_config, model, alignment)
    train_dense("seg", data, out, make, device=device, split=split, val_split=val_split, cached=cached,
                cache_dir=cache_dir, eval_limit=eval_limit, evaluate=not no_eval, log=click.echo, overwrite=overwrite, group=group,
                max_iters=iters, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_iters=warmup,
                schedule=schedule, crop_size=crop_size, base_size=base_size, slide_crop=slide_crop,
                slide_stride=slide_stride, workers=workers, seed=seed, precision=precision)


@seg.command("eval")
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", default="val", show_default=True)
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("--inference", type=click.Choice(["slide", "whole"]), default=None, help="Default: the head's.")
@precision_option()
@click.option("--slide-crop", type=CROP, default=None)
@click.option("--slide-stride", type=POSITIVE, default=None)
@click.option("--limit", type=LIMIT, default=None, help="Evaluate the first N images only.")
@click.option("--per-class", is_flag=True, help="Also print per-class IoU / Acc.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here.")
@overwrite_option
def eval_cmd(data, split, head_path, dinov3, svg, svg_config, model, alignment, device, inference, precision,
             slide_crop, slide_stride, limit, per_class, json_out, overwrite):
    """Evaluate a trained head (mIoU / mAcc / aAcc, sliding-window inference on the original images)."""
    from ..evaluation.dense import evaluate_dense

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    evaluate_dense("seg", data, head_path, enc, device=device, split=split, limit=limit, per_class=per_class,
                   json_out=json_out, log=click.echo, warn=_warn, overwrite=overwrite, inference=inference,
                   slide_crop=slide_crop, slide_stride=slide_stride, precision=precision)


@seg.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--alpha", type=Real(0, 1, "an opacity"), default=0.5, show_default=True, help="Mask opacity in the overlay.")
@precision_option()
@overwrite_option
def predict(images, head_path, dinov3, svg, svg_config, model, alignment, device, out, alpha, precision, overwrite):
    """Segment IMAGES (paths, or sample:digitseg/val); writes <stem>_labels/_mask/_overlay.png to OUT."""
    from ..evaluation.dense import predict_dense

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    predict_dense("seg", images, head_path, enc, out, device=device, alpha=alpha, log=click.echo, warn=_warn,
                  precision=precision, overwrite=overwrite)
