"""`svgfeat encode IMAGES... -o out.safetensors`: features of a handful of images."""

import click

from ._common import build_encoder, encoder_options
from ._types import SIZE


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output .safetensors.")
@encoder_options
@click.option("--groups", default="latent,cls,pooled", show_default=True)
@click.option("--size", default=256, show_default=True, type=SIZE)
@click.option("--preset", default="svg", show_default=True, type=click.Choice(["svg", "center-crop", "resize", "none"]))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT that svgfeat did not write.")
def encode(images, out, dinov3, svg, svg_config, model, alignment, device, groups, size, preset, overwrite):
    """Encode IMAGES (paths or sample:photos) and save the requested groups (fp32) to OUT."""
    import torch

    from ..atomic import check_output

    check_output(out, overwrite, "output file")
    from ..checkpoints import save_safetensors
    from ..data import open_dataset
    from ..data.transforms import preprocess
    from ..extraction import validate_groups
    from ..models.svg import layers_needed

    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    gs = validate_groups(groups, enc)
    if len(images) == 1 and images[0].startswith("sample:"):
        ds = open_dataset(images[0])
        pil, names = [ds.load(i) for i in range(len(ds))], ds.paths
    else:
        pil, names = list(images), list(images)
    from ..numerics import Numerics

    num = Numerics.for_device(device)  # fp32, recorded with the features
    x = preprocess(pil, preset=preset, size=size).to(device)
    with num.autocast():
        f = enc.encode(x, layers=layers_needed(gs) or None)
    tensors = {g: f.group(g).float() for g in gs}
    save_safetensors(out, tensors, {"images": [str(n) for n in names], "provenance": enc.provenance,
                                    "transform": {"preset": preset, "size": size}, "numerics": num.record()},
                      sidecar_json=False)
    for g, t in tensors.items():
        click.echo(f"{g:<10} {tuple(t.shape)}  mean {t.mean():+.4f}  std {t.std():.4f}")
    click.echo(f"wrote {len(names)} image(s) to {out}")
    _ = torch
