"""`svgfeat generate --dit PATH --svg PATH --stats PATH --classes 207,360 -o DIR`: class-conditional samples."""

import click

from ..numerics import Numerics
from ..outputs import check_outputs
from ..picture_files import encode_image
from ._common import build_encoder, encoder_options, overwrite_option, write_output
from ._types import GUIDANCE, SEED, SHIFT, Count


def _parse_classes(value: str, num_classes: int | None = None) -> list[int]:
    try:
        cls = [int(c) for c in value.split(",") if c.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint="--classes") from None
    bad = [c for c in cls if num_classes is not None and not 0 <= c < num_classes]
    if not cls or bad:
        raise click.BadParameter(f"class ids must be in [0, {num_classes}); got {value!r}", param_hint="--classes")
    return cls


def to_uint8(img):
    """image [B,3,H,W] in ~[-1,1] -> uint8 numpy [B,H,W,3] (clamped, as the official sampler)."""
    import numpy as np
    import torch

    x = ((img.clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).to("cpu", dtype=torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def save_grid(images, rows: int, path, meta: dict | None = None) -> None:
    """uint8 [rows*cols,H,W,3] -> one PNG with ``rows`` rows."""
    import numpy as np
    from PIL import Image

    n, H, W, _ = images.shape
    cols = (n + rows - 1) // rows
    grid = np.zeros((rows * H, cols * W, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * H:(r + 1) * H, c * W:(c + 1) * W] = im
    write_output(path, encode_image(Image.fromarray(grid), meta=meta))


@click.command()
@click.option("--dit", "dit_path", default=None, type=click.Path(dir_okay=False),
              help="DiT weights: official .pt ({'ema': ...}), svgfeat .safetensors or hf://ORG/NAME/file; "
                   "default with --pretrained: SVG-XL from howlin/SVG.")
@click.option("--dit-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Official DiT YAML (model.params) or svgfeat JSON; default: inferred from the weights.")
@encoder_options
@click.option("--stats", "stats_path", default=None, type=click.Path(dir_okay=False),
              help="Latent mean/std (official dinov3_sp_stats.pt or a run's latent_stats.pt); default with "
                   "--pretrained: the released dinov3_sp_stats.pt.")
@click.option("--classes", required=True, help="Comma-separated class ids, e.g. 207,360.")
@click.option("--n", "n", default=4, show_default=True, type=Count(1, "a number of samples", 100_000), help="Samples per class.")
@click.option("--steps", default=25, show_default=True, type=Count(1, "a number of sampling steps", 10_000))
@click.option("--cfg", default=1.5, show_default=True, type=GUIDANCE, help="Guidance scale (1 = none).")
@click.option("--cfg-mode", default="constant", show_default=True,
              help="constant | linear | late | early-<tau> | cfg_star-<K>-<r> | interval.")
@click.option("--cfg-interval", default=None, help="lo,hi: guidance only for t in [lo, hi].")
@click.option("--method", default="euler", show_default=True, type=click.Choice(["euler", "heun", "midpoint", "ab2"]))
@click.option("--shift", default=0.15, show_default=True, type=SHIFT, help="Sampling time shift.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--batch-size", default=16, show_default=True, type=Count(1, "a batch size", 65_536))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@overwrite_option
def generate(dit_path, dit_config, dinov3, svg, svg_config, model, alignment, device, stats_path, classes, n, steps,
             cfg, cfg_mode, cfg_interval, method, shift, seed, batch_size, out, overwrite, pretrained=False):
    """Sample latents with the DiT, decode them with the SVG decoder, write PNGs and grid.png."""
    from pathlib import Path

    import torch
    from PIL import Image

    from ..generation.sampling import sample
    from ..generation.stats import denormalize_tokens, load_stats
    from ..hub import resolve
    from ..models.build import check_pretrained, load_dit

    if dit_path is None and not pretrained:
        raise click.UsageError("pass the DiT weights with --dit PATH, or --pretrained for the released SVG-XL")
    if stats_path is None and not pretrained:
        raise click.UsageError("pass the latent statistics with --stats PATH, or --pretrained for the released ones")
    names = [f"class{lab:04d}_{k:03d}.png" for lab in _parse_classes(classes) for k in range(n)]
    check_outputs([Path(out) / f for f in (*names, "grid.png")], overwrite)
    if pretrained:  # every missing Hub file named in one message, before anything is loaded
        check_pretrained(("svg_dit_xl", {"dit": dit_path or "hf", "stats": stats_path or "hf",
                                         "dit_config": None if dit_path or dit_config else "hf"}),
                         (model or "svg_vits16plus", {"dinov3": dinov3, "svg": svg, "svg_config": svg_config}))
    dit = load_dit(dit_path or "svg_dit_xl", config=dit_config, device=device, pretrained=dit_path is None)
    stats_path = resolve(stats_path or "hf", "svg_dit_xl", "stats")[0]
    cls = _parse_classes(classes, dit.num_classes)
    interval = None
    if cfg_interval:
        try:
            interval = tuple(float(v) for v in cfg_interval.split(","))
        except ValueError:
            raise click.BadParameter("expected lo,hi", param_hint="--cfg-interval") from None
    st = load_stats(stats_path)
    C, s = dit.in_channels, dit.config.input_size
    if st["mean"].numel() < C:
        raise click.BadParameter(f"stats have {st['mean'].numel()} channels, the DiT needs {C}", param_hint="--stats")
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    if getattr(enc, "decoder", None) is None:
        raise click.UsageError("the encoder has no pixel decoder: pass the SVG autoencoder with --svg")
    if enc.latent_channels != C:
        raise click.UsageError(f"the DiT makes {C}-channel latents but the decoder takes {enc.latent_channels}")
    labels = torch.tensor([c for c in cls for _ in range(n)], dtype=torch.long)
    g = torch.Generator(device="cpu").manual_seed(seed)
    z0 = torch.randn(len(labels), s * s, C, generator=g)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(0, len(labels), batch_size):
        x = sample(dit, z0[i:i + batch_size].to(device), labels[i:i + batch_size].to(device), steps=steps, cfg=cfg,
                   method=method, shift=shift, cfg_mode=cfg_mode, null_label=dit.num_classes,
                   cfg_interval=interval, progress=True)
        lat = denormalize_tokens(x, st["mean"][:C], st["std"][:C], s, s)
        images.append(to_uint8(enc.decode(lat.to(device))))
    import numpy as np

    images = np.concatenate(images)
    meta = {"made_by": "svgfeat generate", "method": method, "steps": steps, "cfg": cfg, "cfg_mode": cfg_mode,
            "shift": shift, "seed": seed, "numerics": Numerics.for_device(device).record()}  # fp32 sampling
    for name, im in zip(names, images):
        write_output(outp / name, encode_image(Image.fromarray(im), meta=meta))
    save_grid(images, len(cls), outp / "grid.png", meta)
    click.echo(f"wrote {len(images)} samples ({method}, {steps} steps, cfg {cfg} {cfg_mode}) and grid.png to {outp}")
