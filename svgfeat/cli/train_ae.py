"""`svgfeat train-ae DATA --dinov3 PATH --out DIR`: train an SVG autoencoder (residual encoder + decoder)."""

from __future__ import annotations

import os

import click

from ._common import overwrite_option, precision_option
from ._types import DEVICE, ENCODER, LOSS_WEIGHT, LR, PROBABILITY, SEED, SIZE, WORKERS, Count, Real

BACKBONES = ["vit_small", "vit_small_plus", "vit_base", "vit_large", "vit_huge_plus"]


@click.command(name="train-ae")
@click.argument("data")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (resumes if it "
              "holds checkpoints).")
@click.option("--dinov3", default=None, help="Frozen DINOv3 weights (Meta .pth, timm .safetensors, 'hf' or "
              "hf://ORG/NAME/file); optional only for test_* models.")
@click.option("--pretrained", is_flag=True, help="DINOv3 from the Hugging Face Hub (timm/vit_small_plus_patch16_dinov3_"
              "qkvb.lvd1689m) when --dinov3 is not given; same as --dinov3 hf.")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None,
              help="DINOv3 variant (default: inferred from --dinov3, else vit_small_plus).")
@click.option("--model", default=None, type=ENCODER, help="Registered encoder to start from instead (e.g. test_tiny).")
@click.option("--size", default=256, show_default=True, type=SIZE, help="Training crop size (multiple of 16).")
@click.option("--steps", default=100_000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Global batch (split over torchrun ranks).")
@click.option("--lr", default=1e-4, show_default=True, type=LR)
@click.option("--disc-lr", default=None, type=LR, help="Discriminator lr (default: --lr).")
@click.option("--disc-start", default=2501, show_default=True, type=Count(0, "a step", 100_000_000),
              help="Iteration at which the adversarial loss starts (official 5001 Lightning steps = 2501).")
@click.option("--disc-weight", default=0.5, show_default=True, type=LOSS_WEIGHT)
@click.option("--perceptual-weight", default=1.0, show_default=True, type=LOSS_WEIGHT)
@click.option("--reduction", type=click.Choice(["sum", "mean"]), default="sum", show_default=True,
              help="Reconstruction loss: per-image pixel sum (official) or mean.")
@click.option("--mask-ratio", default=None, type=PROBABILITY, help="Residual masking probability (default 0.1).")
@click.option("--residual-dropout", default=None, type=PROBABILITY, help="Residual ViT dropout (default 0.1).")
@click.option("--rope-rescale", default=None, type=Real(0, 100, "a RoPE rescale factor", lo_open=True),
              help="DINOv3 train-mode RoPE rescale factor; 2 reproduces the official run (default: off).")
@click.option("--batch-stats", type=click.Choice(["global", "local"]), default="global", show_default=True,
              help="Under torchrun: alignment/BatchNorm/adaptive-weight statistics over the global batch, or "
                   "per rank (official).")
@click.option("--lpips", "lpips_mode", type=click.Choice(["auto", "pretrained", "random", "none"]), default="auto",
              show_default=True, help="LPIPS weights. auto: pretrained when found (--lpips-weights/--vgg-weights, "
              "env, torch cache), else train without the perceptual term (with a warning); pretrained: require them; "
              "'random' only checks the plumbing.")
@click.option("--lpips-weights", default=None, type=click.Path(dir_okay=False, exists=True),
              help="LPIPS lin layers (vgg.pth).")
@click.option("--vgg-weights", default=None, type=click.Path(dir_okay=False, exists=True),
              help="torchvision vgg16 state dict (vgg16-397923af.pth).")
@precision_option(("auto", "fp32", "bf16"), "Numerics of the forward passes (recorded; a resume in another precision "
                  "is refused). auto = bf16 autocast on CUDA, fp32 elsewhere; bf16: autocast.", default="auto")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp32"]), default=None, hidden=True,
              help="Deprecated: --precision.")
@click.option("--seed", default=23, show_default=True, type=SEED)
@click.option("--workers", default=min(4, os.cpu_count() or 1), show_default=True, type=WORKERS)
@click.option("--log-every", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--ckpt-every", default=2000, show_default=True, type=click.IntRange(min=1))
@click.option("--sample-every", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--num-samples", default=8, show_default=True, type=click.IntRange(min=1),
              help="Fixed training images in each reconstruction sheet (samples/step_*.png).")
@click.option("--stats-images", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Training images used for the fixed alignment statistics at the end.")
@click.option("--export-official", is_flag=True, help="Also write official/svg_autoencoder.ckpt + .yaml.")
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--device", default="cpu", show_default=True, type=DEVICE)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--family", type=click.Choice(["svg", "t2i-r", "t2i-p"]), default="svg", show_default=True,
              help="Autoencoder family. Only svg (original SVG) trains; SVG-T2I R/P load and run but do not train yet.")
@overwrite_option
def train_ae(data, out, dinov3, pretrained, backbone, model, size, steps, batch_size, lr, disc_lr, disc_start, disc_weight,
             perceptual_weight, reduction, mask_ratio, residual_dropout, rope_rescale, batch_stats, lpips_mode,
             lpips_weights, vgg_weights, precision, amp, seed, workers, log_every, ckpt_every, sample_every, num_samples,
             stats_images, export_official, resume, device, progress, overwrite, family="svg"):
    """Train the SVG residual encoder + pixel decoder on DATA (dataset spec, folder or file list)."""
    if family == "svg" and model and "t2i" in model:  # registered SVG-T2I encoders (svg_t2i_*, test_tiny_t2i_*)
        family = "t2i-" + ("p" if "t2i_p" in model else "r")
    if family != "svg":
        from ..errors import ConfigError

        raise ConfigError(f"train-ae --family {family}: training the SVG-T2I autoencoders is not implemented yet "
                          "(svgfeat loads and runs the released ones: --svg svg_autoencoder-{R,P}-stage{1,2,3}.ckpt); "
                          "--family svg trains the original SVG autoencoder")
    from ..training.ae_train import train_ae as run

    if amp is not None:  # the old spelling of --precision
        click.echo(f"warning: --amp is deprecated; use --precision {amp}", err=True)
        src = click.get_current_context().get_parameter_source("precision")
        if src == click.core.ParameterSource.COMMANDLINE and precision != amp:
            from ..errors import ConfigError

            raise ConfigError(f"--amp {amp} (deprecated) and --precision {precision} disagree; pass --precision only")
        precision = amp

    if pretrained and dinov3 is None:
        dinov3 = "hf"

    summary = run(data, out, model=model, backbone=backbone, dinov3=dinov3, device=device, resume=resume, overwrite=overwrite,
                  progress=progress, size=size, steps=steps, batch_size=batch_size, lr=lr, disc_lr=disc_lr,
                  disc_start=disc_start, disc_weight=disc_weight, perceptual_weight=perceptual_weight,
                  reduction=reduction, mask_ratio=mask_ratio, residual_dropout=residual_dropout,
                  rope_rescale=rope_rescale, batch_stats=batch_stats, lpips=lpips_mode,
                  lpips_weights=lpips_weights, vgg_weights=vgg_weights, precision=precision, seed=seed, workers=workers,
                  log_every=log_every, ckpt_every=ckpt_every, sample_every=sample_every, num_samples=num_samples,
                  stats_images=stats_images,
                  export_official=export_official)
    if "encoder" not in summary:  # non-zero ranks
        return
    last = summary.get("last") or {}
    click.echo(f"trained {summary['steps']} steps (from {summary['start_step']}); latent channels "
               f"{summary['latent_channels']}")
    if last:
        click.echo(f"last logged step {last['step']}: L1 {last['l1']:.4f}  PSNR {last['psnr']:.2f} dB")
    click.echo(f"encoder: {summary['encoder']} (fixed alignment stats over {summary['fixed_stats']['images']} images)")
    click.echo(f"LPIPS: {summary['lpips']}")
    for p in summary.get("official", []):
        click.echo(f"official: {p}")
