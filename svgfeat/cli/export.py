"""`svgfeat export`: convert an encoder to the official SVG layout or to svgfeat's format."""

import click

from ._common import build_encoder, encoder_options


@click.command()
@encoder_options
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["official", "svgfeat"]), default="official", show_default=True)
@click.option("--no-encoder", is_flag=True, help="official: leave out the embedded encoder.* (DINOv3) keys.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files that svgfeat did not write.")
def export(dinov3, svg, svg_config, model, alignment, device, out, fmt, no_encoder, overwrite):
    """Write the loaded SVG autoencoder as an official Lightning .ckpt + YAML, or svgfeat safetensors + JSON."""
    from pathlib import Path

    from ..atomic import check_output
    from ..models.loading import export_official, save_encoder

    side = Path(out).with_suffix(".yaml" if fmt == "official" else ".json")
    for p in (out, side):
        check_output(p, overwrite, "output file")
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    if fmt == "official":
        ck, yml = export_official(enc, out, include_encoder=not no_encoder)
        click.echo(f"wrote {ck} and {yml}")
    else:
        click.echo(f"wrote {save_encoder(enc, out)}")
