"""`svgfeat fid SAMPLES REF.npz --inception PATH`: FID of generated images against ADM-format reference stats.

A thin command over :func:`svgfeat.evaluation.fid.fid_score` (the network and the maths live there).
"""

from __future__ import annotations

import click

from ..evaluation.fid import INCEPTION_FILE
from ._common import overwrite_option
from ._types import DEVICE


@click.command()
@click.argument("samples", type=click.Path(exists=True))
@click.argument("ref", type=click.Path(exists=True, dir_okay=False))
@click.option("--inception", type=click.Path(dir_okay=False), default=None,
              help=f"Path to {INCEPTION_FILE} (default: $TORCH_HOME/hub/checkpoints/).")
@click.option("--batch-size", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, type=DEVICE)
@click.option("--save-stats", type=click.Path(dir_okay=False), default=None,
              help="Write the samples' mu/sigma to this .npz (reusable as SAMPLES).")
@overwrite_option
def fid(samples, ref, inception, batch_size, device, save_stats, overwrite):
    """FID between SAMPLES (image folder or .npz) and REF (.npz with mu, sigma)."""
    from ..evaluation.fid import fid_score

    r = fid_score(samples, ref, inception, batch_size, device, save_stats, progress=True, overwrite=overwrite)
    click.echo(f"FID {r['fid']:.4f}" + (f" ({r['n']} samples)" if r["n"] else ""))
