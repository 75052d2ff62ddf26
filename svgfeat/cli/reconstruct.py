"""`svgfeat reconstruct IMG -o out.png`: encode then decode (SVG autoencoder round trip)."""

import click

from ..numerics import Numerics
from ..outputs import check_outputs
from ..picture_files import encode_image
from ._common import build_encoder, encoder_options, overwrite_option, write_output
from ._types import SIZE


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(), help="Output PNG (one image) or directory.")
@encoder_options
@click.option("--size", default=256, show_default=True, type=SIZE)
@click.option("--side-by-side/--no-side-by-side", default=True, show_default=True,
              help="Write input and reconstruction next to each other.")
@overwrite_option
def reconstruct(images, out, dinov3, svg, svg_config, model, alignment, device, size, side_by_side, overwrite):
    """Reconstruct IMAGES through the SVG latent and write PNGs (with PSNR printed)."""
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from ..data.transforms import denormalize, preprocess

    outp = Path(out)
    many = len(images) > 1 or outp.suffix.lower() != ".png"
    targets = [outp / f"{Path(name).stem}_recon.png" for name in images] if many else [outp]
    check_outputs(targets, overwrite)
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    x = preprocess(list(images), preset="svg", size=size).to(device)
    rec = enc.decode(enc.encode(x).latent).clamp(-1, 1)
    src = denormalize(x).clamp(0, 1)
    rec01 = (rec + 1) / 2
    if many:
        outp.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        mse = torch.mean((src[i] - rec01[i]) ** 2).item()
        psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
        pair = torch.cat([src[i], rec01[i]], dim=2) if side_by_side else rec01[i]
        arr = (pair.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        target = targets[i]
        write_output(target, encode_image(Image.fromarray(arr), meta={
            "made_by": "svgfeat reconstruct", "size": size, "psnr_db": round(float(psnr), 4),
            "numerics": Numerics.for_device(device).record()}))
        click.echo(f"{name}: PSNR {psnr:.2f} dB -> {target}")
