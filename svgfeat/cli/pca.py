"""`svgfeat pca IMAGES... -o DIR`: each image beside the first 3 PCA components of its patch features as RGB.

PCA is fitted over the patch tokens of all given images together, so colours are comparable across
images. With ``--fg-threshold`` the first component (min-max scaled to [0, 1] over all tokens) separates
foreground (> threshold, or < with ``--fg-invert``) from background; PCA is then refitted on the
foreground tokens only and the background is drawn black (DINOv2's visualisation). The pictures are made
by :func:`svgfeat.visualize.pca_pictures`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..numerics import Numerics
from ..outputs import check_outputs
from ..picture_files import encode_image
from ._common import build_encoder, encoder_options, overwrite_option, precision_option, write_output
from ._types import SIZE, Real


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@encoder_options
@click.option("--group", type=click.Choice(["dino", "latent"]), default="dino", show_default=True)
@click.option("--size", type=SIZE, default=448, show_default=True, help="Input size (multiple of 16).")
@click.option("--preset", type=click.Choice(["resize", "svg", "center-crop"]), default="resize", show_default=True)
@click.option("--fg-threshold", type=Real(0, 1, "a threshold"), default=None,
              help="Keep tokens whose first component (scaled to [0, 1]) exceeds this, e.g. 0.5.")
@click.option("--fg-invert", is_flag=True, help="Foreground is *below* the threshold (PCA sign is arbitrary).")
@click.option("--side-by-side/--pca-only", default=True, show_default=True,
              help="Write the input (as the encoder saw it) beside its PCA picture, or the PCA picture alone.")
@precision_option(help="Numerics of the encoder forward pass (recorded in each PNG); bf16/fp16: autocast.")
@overwrite_option
def pca(images, out, dinov3, svg, svg_config, model, alignment, device, group, size, preset, fg_threshold,
        fg_invert, side_by_side, precision, overwrite):
    """Write <stem>_pca.png for each of IMAGES (paths or sample:photos): the image beside its patch-feature PCA."""
    from PIL import Image

    from ..data import open_dataset
    from ..data.decode import load_image
    from ..visualize import pca_pictures

    sample = len(images) == 1 and images[0].startswith("sample:")
    ds = open_dataset(images[0]) if sample else None
    stems = [Path(p).name for p in ds.paths] if sample else [Path(p).stem for p in images]
    outdir = Path(out)
    check_outputs([outdir / f"{stem}_pca.png" for stem in stems], overwrite)
    numerics = Numerics.for_device(device, precision)  # one line when the device cannot run it
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    pil = [ds.load(i) for i in range(len(ds))] if sample else [load_image(p) for p in images]
    with numerics.autocast():
        pics, ratios, tokens = pca_pictures(pil, enc, group=group, size=size, preset=preset, device=device,
                                            fg_threshold=fg_threshold, invert=fg_invert, original=side_by_side)
    for pic, stem in zip(pics, stems):
        write_output(outdir / f"{stem}_pca.png", encode_image(Image.fromarray(pic), meta={
            "made_by": "svgfeat pca", "group": group, "size": size, "preset": preset, "numerics": numerics.record()}))
    click.echo(f"PCA over {tokens} patch tokens of {len(pics)} image(s); "
               f"explained variance {', '.join(f'{r:.3f}' for r in ratios)}")
    click.echo(f"wrote {len(pics)} picture(s) to {outdir}")
