"""`svgfeat train-dit CACHE --model svg_dit_xl --out DIR`: flow-matching training of an SVG DiT on cached latents.

Runs as is on one device, or under ``torchrun --nproc_per_node N svgfeat train-dit ...`` (DDP).
"""

import click

from ._common import precision_option
from ._types import (
    DECAY,
    DEVICE,
    DIT,
    LR,
    POSITIVE,
    PROBABILITY,
    SEED,
    SHIFT,
    WEIGHT_DECAY,
    Count,
    NonEmptyPath,
    Real,
)


@click.command("train-dit")
@click.argument("cache", type=NonEmptyPath(exists=True, file_okay=False))
@click.option("--model", default="svg_dit_xl", show_default=True, type=DIT, help="Registered DiT (svg_dit_b/l/xl, test_dit_tiny).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--steps", default=400_000, show_default=True, type=Count(0, "a number of steps", 100_000_000))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Global batch.")
@click.option("--lr", default=1e-4, show_default=True, type=LR)
@click.option("--weight-decay", default=0.0, show_default=True, type=WEIGHT_DECAY)
@click.option("--ema-decay", default=0.9999, show_default=True, type=DECAY)
@click.option("--shift", default=0.4, show_default=True, type=SHIFT, help="Training time shift s.")
@click.option("--grad-clip", default=None, type=Real(0, 1e6, "a gradient-norm clip", lo_open=True), help="Clip the gradient norm (off by default).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="cpu or cuda (each torchrun rank uses its local GPU).")
@click.option("--log-every", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--ckpt-every", default=50_000, show_default=True, type=click.IntRange(min=1))
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoints.")
@click.option("--hflip", is_flag=True, help="Randomly flip the token grid horizontally.")
@click.option("--stats", "stats_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Latent stats (.pt official layout or .npz); default: the cache's `svgfeat stats` output.")
@click.option("--num-classes", type=POSITIVE, default=None, help="Override the DiT's class count (default 1000).")
@click.option("--class-dropout", type=PROBABILITY, default=None, help="Label dropout for CFG (default 0.1).")
@precision_option(("fp32", "bf16"), "Forward-pass numerics (recorded; a resume in another precision is refused). "
                  "bf16: autocast.")
@click.option("--tf32", is_flag=True, help="Allow TF32 float32 matmuls on CUDA (the official recipe; recorded).")
@click.option("--overwrite", is_flag=True, help="Replace files in OUT that svgfeat did not write.")
def train_dit(cache, model, out, steps, batch_size, lr, weight_decay, ema_decay, shift, grad_clip, seed, device,
              log_every, ckpt_every, resume, hflip, stats_path, num_classes, class_dropout, precision, tf32,
              overwrite):
    """Train a DiT on the `latent` group of CACHE (per-channel standardised tokens)."""
    from ..generation.train import train_dit as run

    overrides = {}
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if class_dropout is not None:
        overrides["class_dropout_prob"] = class_dropout
    r = run(cache, model, out, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            ema_decay=ema_decay, shift=shift, grad_clip=grad_clip, seed=seed, device=device, log_every=log_every,
            ckpt_every=ckpt_every, resume=resume, hflip=hflip, stats=stats_path, model_overrides=overrides,
            precision=precision, tf32=tf32, overwrite=overwrite)
    loss = "n/a" if r["loss"] is None else f"{r['loss']:.4f}"
    click.echo(f"step {r['step']}: loss {loss}; EMA weights -> {r['ema']} (log: {out}/log.jsonl)")
