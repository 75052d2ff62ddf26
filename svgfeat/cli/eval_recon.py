"""`svgfeat eval-recon DATA --svg CKPT --dinov3 PATH`: PSNR / SSIM / LPIPS / rFID of SVG reconstructions."""

from __future__ import annotations

import json

import click

from ..outputs import check_outputs
from ._common import build_encoder, encoder_options, overwrite_option, write_output
from ._types import SIZE


@click.command(name="eval-recon")
@click.argument("data")
@encoder_options
@click.option("--size", default=256, show_default=True, type=SIZE, help="Centre-crop size (multiple of 16).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per encoder call (with --alignment batch, also the alignment batch).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Evaluate the first N images only.")
@click.option("--lpips", "lpips_mode", type=click.Choice(["auto", "pretrained", "random", "none"]), default="auto",
              show_default=True, help="auto: LPIPS when its weights are found, else skipped with a note.")
@click.option("--lpips-weights", default=None, type=click.Path(dir_okay=False, exists=True),
              help="LPIPS lin layers (vgg.pth).")
@click.option("--vgg-weights", default=None, type=click.Path(dir_okay=False, exists=True),
              help="torchvision vgg16 state dict for LPIPS.")
@click.option("--inception", default=None, type=click.Path(dir_okay=False, exists=True),
              help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth) for rFID; default: the torch cache.")
@click.option("--sheet", default="recon_sheet.png", show_default=True, type=click.Path(dir_okay=False),
              help="Side-by-side PNG (original | reconstruction); '' to skip.")
@click.option("--sheet-images", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the metrics here.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@overwrite_option
def eval_recon(data, dinov3, svg, svg_config, model, alignment, device, size, batch_size, limit, lpips_mode,
               lpips_weights, vgg_weights, inception, sheet, sheet_images, json_out, progress, overwrite):
    """Reconstruct DATA through the SVG latent and report PSNR, SSIM, LPIPS and rFID."""
    from ..data import open_dataset
    from ..errors import CheckpointError
    from ..training.lpips import build_lpips
    from ..training.recon_metrics import evaluate_reconstruction

    check_outputs([sheet or None, json_out], overwrite)
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    dataset = open_dataset(data)
    lp, notes = None, []
    if lpips_mode != "none":
        try:
            lp = build_lpips(vgg_weights, lpips_weights, pretrained=lpips_mode != "random", device=device)
        except CheckpointError as e:
            if lpips_mode == "pretrained":
                raise
            notes.append(f"LPIPS skipped: {e}")
    inc = None
    from ..evaluation.fid import InceptionFeatures, find_inception_weights

    try:
        inc = InceptionFeatures(find_inception_weights(inception), device)
    except CheckpointError as e:
        if inception:  # an explicit path that does not work is an error, not a skip
            raise
        notes.append(f"rFID skipped: {e}")
    res = evaluate_reconstruction(enc, dataset, size=size, batch_size=batch_size, device=device, lpips=lp,
                                  inception=inc, limit=limit, sheet=sheet or None, sheet_images=sheet_images,
                                  progress=progress)
    from ..numerics import Numerics

    res["alignment"], res["numerics"] = enc.alignment, Numerics.for_device(device).record()  # fp32
    if enc.alignment == "batch":
        res["alignment_batch"] = batch_size
    for n in notes:
        click.echo(n, err=True)
    parts = [f"n={res['n']}", f"PSNR {res['psnr']:.3f} dB", f"SSIM {res['ssim']:.4f}"]
    if "lpips" in res:
        parts.append(f"LPIPS {res['lpips']:.4f}")
    if "rfid" in res:
        parts.append(f"rFID {res['rfid']:.3f}")
    click.echo("  ".join(parts))
    if "sheet" in res:
        click.echo(f"sheet: {res['sheet']}")
    if json_out:
        write_output(json_out, json.dumps(res, indent=1))
