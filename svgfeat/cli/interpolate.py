"""`svgfeat interpolate A.png B.png -o strip.png`: decode a linear path between two images' SVG latents."""

import click

from ..numerics import Numerics
from ..outputs import check_outputs
from ..picture_files import encode_image
from ._common import build_encoder, encoder_options, overwrite_option, write_output
from ._types import SIZE


@click.command()
@click.argument("image_a")
@click.argument("image_b")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output strip PNG.")
@encoder_options
@click.option("--n", "n", default=8, show_default=True, type=click.IntRange(min=2), help="Frames incl. both ends.")
@click.option("--size", default=256, show_default=True, type=SIZE, help="Input side (multiple of 16).")
@click.option("--with-inputs/--no-inputs", default=False, show_default=True,
              help="Put the two input images at the ends of the strip.")
@overwrite_option
def interpolate(image_a, image_b, out, dinov3, svg, svg_config, model, alignment, device, n, size, with_inputs,
                overwrite):
    """Encode IMAGE_A and IMAGE_B (one batch), lerp their latents in N steps, decode, save a strip PNG."""
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from ..data.transforms import denormalize, preprocess
    from .generate import to_uint8

    check_outputs([out], overwrite)
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    if getattr(enc, "decoder", None) is None:
        raise click.UsageError("the encoder has no pixel decoder: pass the SVG autoencoder with --svg")
    x = preprocess([image_a, image_b], preset="svg", size=size).to(device)
    z = enc.encode(x).latent  # [2, C, h, w]
    alpha = torch.linspace(0, 1, n, device=z.device).view(-1, 1, 1, 1)
    frames = to_uint8(enc.decode((1 - alpha) * z[:1] + alpha * z[1:]))
    if with_inputs:
        src = to_uint8(denormalize(x).clamp(0, 1) * 2 - 1)
        frames = np.concatenate([src[:1], frames, src[1:]])
    strip = np.concatenate(list(frames), axis=1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_output(out, encode_image(Image.fromarray(strip), meta={"made_by": "svgfeat interpolate", "size": size,
                                                                 "numerics": Numerics.for_device(device).record()}))
    click.echo(f"wrote {len(frames)} frames ({strip.shape[1]}x{strip.shape[0]}) to {out}")
