"""`svgfeat depth train|eval|predict`: the native linear depth head (DINOv3 NYUv2 linear protocol).

Defaults are the protocol presets of :mod:`svgfeat.evaluation.protocols` (``nyuv2-linear``: 416 x 544 crops,
38.4k iterations, 12.8k warm-up, lr 3e-4, batch 16, flip TTA; for the embedded ``sample:depth`` set
``depth-sample``: 96 x 96 crops, 150 iterations, lr 1e-2, batch 8); the runs are :mod:`svgfeat.evaluation.dense`.
"""

from __future__ import annotations

import functools

import click

from ..errors import ConfigError
from ._common import build_encoder, encoder_options, overwrite_option, precision_option
from ._types import GRAD_CLIP, LIMIT, LR, POSITIVE, SEED, SIZE, WEIGHT_DECAY, WORKERS, Real

DATA_HELP = "NYUv2 root, images/+depth/ folder, or sample:depth."


def _warn(msg: str) -> None:
    click.echo(msg, err=True)


def _crop(ctx, param, v):
    if v is None:
        return None
    try:
        parts = [int(p) for p in v.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    parts = parts * 2 if len(parts) == 1 else parts
    if len(parts) != 2 or min(parts) < 1:
        raise ConfigError(f"crop size {v!r}: expected H,W (e.g. 416,544) or one integer")
    return parts[0], parts[1]


def _data_options(f):
    f = click.option("--split-file", type=click.Path(dir_okay=False), default=None,
                     help="List file 'rgb depth [focal]' per line (default: NYUv2's nyudepthv2_*_files_with_gt.txt).")(f)
    return click.option("--depth-scale", type=Real(0, 1e6, "raw units per metre", lo_open=True), default=None,
                        help="Raw depth units per metre (default 1000 for 16-bit PNG = millimetres, 1 for .npy = "
                             "metres; 8-bit PNGs need it).")(f)


@click.group()
def depth():
    """Monocular depth with a linear head on SVG / DINOv3 patch features (NYUv2 protocol)."""


@depth.command()
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--val-split", default="val", show_default=True, help="Split evaluated after training "
              "(NYUv2: the 654-image Eigen test split).")
@_data_options
@click.option("--val-split-file", type=click.Path(dir_okay=False), default=None, help="List file of the val split.")
@encoder_options
@click.option("--group", type=click.Choice(["latent", "dino"]), default="latent", show_default=True,
              help="latent = DINOv3 + residual channels; dino = DINOv3 only.")
@click.option("--cached", is_flag=True, help="Train from a dense-feature cache (fast, no augmentation).")
@precision_option()
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the cache lives / is extracted (default OUT/cache).")
@click.option("--cache-size", type=SIZE, default=None,
              help="Square side the cache resizes images to (default: the sample's 96; 480 otherwise).")
@click.option("--iters", type=POSITIVE, default=None, help="Training iterations (38400; 150 for the sample).")
@click.option("--batch-size", type=POSITIVE, default=None, help="Global batch size (16; 8 for the sample).")
@click.option("--lr", type=LR, default=None, help="AdamW learning rate (3e-4; 1e-2 for the sample).")
@click.option("--weight-decay", type=WEIGHT_DECAY, default=None, help="AdamW weight decay (1e-4).")
@click.option("--grad-clip", type=GRAD_CLIP, default=None, help="Gradient-norm clip (35; 0: off).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Warm-up iterations (12800; 15 for the sample).")
@click.option("--crop-size", default=None, callback=_crop, help="Training crop H,W (416,544; 96,96 for the sample).")
@click.option("--bins", "n_bins", type=click.IntRange(min=2), default=None, help="Depth bins (256).")
@click.option("--min-depth", type=Real(0, 1e4, "a depth in metres", lo_open=True), default=None, help="Smallest valid depth in metres (0.001).")
@click.option("--max-depth", type=Real(0, 1e4, "a depth in metres", lo_open=True), default=None, help="Largest valid depth in metres (10).")
@click.option("--no-tta", is_flag=True, help="Evaluate without flip test-time augmentation.")
@click.option("--workers", type=WORKERS, default=0, show_default=True, help="DataLoader workers (online mode).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--eval-limit", type=LIMIT, default=None, help="Evaluate on the first N validation images only.")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation after training.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@overwrite_option
def train(data, split, val_split, depth_scale, split_file, val_split_file, dinov3, svg, svg_config, model,
          alignment, device, group, cached, precision, cache_dir, cache_size, iters, batch_size, lr, weight_decay,
          grad_clip, warmup, crop_size, n_bins, min_depth, max_depth, no_tta, workers, seed, eval_limit, no_eval, out,
          overwrite):
    """Train a linear depth head; writes OUT/head.safetensors (+ .json) and OUT/metrics.json (torchrun: data
    parallel)."""
    from ..evaluation.dense import train_dense

    make = functools.partial(build_encoder, dinov3, svg, svg_config, model, alignment)
    train_dense("depth", data, out, make, device=device, split=split, val_split=val_split, cached=cached,
                cache_dir=cache_dir, cache_size=cache_size, eval_limit=eval_limit, evaluate=not no_eval,
                depth_scale=depth_scale, split_file=split_file, val_split_file=val_split_file, log=click.echo,
                overwrite=overwrite,
                group=group, max_iters=iters, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                grad_clip=grad_clip, warmup_iters=warmup, crop_size=crop_size, n_bins=n_bins, min_depth=min_depth,
                max_depth=max_depth, tta=False if no_tta else None, workers=workers, seed=seed, precision=precision)


@depth.command("eval")
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", default="val", show_default=True, help="val/test = NYUv2's Eigen test split.")
@_data_options
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("--inference", type=click.Choice(["whole", "slide"]), default=None, help="Default: the head's.")
@precision_option()
@click.option("--eval-crop", type=click.Choice(["auto", "eigen", "none"]), default="auto", show_default=True,
              help="auto: Eigen crop for NYUv2, none otherwise.")
@click.option("--no-tta", is_flag=True, help="No flip test-time augmentation.")
@click.option("--limit", type=LIMIT, default=None, help="Evaluate the first N images only.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here.")
@overwrite_option
def eval_cmd(data, split, depth_scale, split_file, head_path, dinov3, svg, svg_config, model, alignment, device,
             inference, precision, eval_crop, no_tta, limit, json_out, overwrite):
    """Evaluate a trained head: RMSE, AbsRel, log10, SILog, delta1-3 (mean over images)."""
    from ..evaluation.dense import evaluate_dense

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    evaluate_dense("depth", data, head_path, enc, device=device, split=split, limit=limit, depth_scale=depth_scale,
                   split_file=split_file, json_out=json_out, log=click.echo, warn=_warn, overwrite=overwrite,
                   inference=inference, eval_crop=eval_crop, tta=not no_tta, precision=precision)


@depth.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, dir_okay=False))
@encoder_options
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--max-display-depth", type=Real(0, 1e4, "a depth in metres", lo_open=True), default=None,
              help="Depth mapped to the last colour (default: the head's max depth).")
@click.option("--no-tta", is_flag=True, help="No flip test-time augmentation.")
@precision_option()
@overwrite_option
def predict(images, head_path, dinov3, svg, svg_config, model, alignment, device, out, max_display_depth, no_tta,
            precision, overwrite):
    """Predict depth for IMAGES (paths, or sample:depth/val); writes <stem>_depth.png (colour map),
    <stem>_side.png (image | depth) and <stem>_depth_mm.png (uint16 millimetres) to OUT."""
    from ..evaluation.dense import predict_dense

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    predict_dense("depth", images, head_path, enc, out, device=device, max_display_depth=max_display_depth,
                  tta=not no_tta, log=click.echo, warn=_warn, precision=precision, overwrite=overwrite)
