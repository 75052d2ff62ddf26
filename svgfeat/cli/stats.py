"""`svgfeat stats CACHE`: exact per-channel statistics (and fixed-alignment statistics)."""

import click

from ._types import NonEmptyPath


@click.command()
@click.argument("path", type=NonEmptyPath(exists=True, file_okay=False))
@click.option("--groups", default="latent", show_default=True, help="Comma-separated groups.")
@click.option("--official", type=click.Path(dir_okay=False), default=None,
              help="Also write the official dinov3_sp_stats.pt format for the first group.")
def stats(path, groups, official):
    """Compute per-channel mean/std of cache groups in one streaming pass; saved in CACHE/stats.json."""
    from ..cache.stats import compute_stats, save_official_stats

    gs = [g.strip() for g in groups.split(",") if g.strip()]
    out = compute_stats(path, gs, progress=True)
    for g in gs:
        if g in out:
            import numpy as np

            m, s = np.asarray(out[g]["mean"]), np.asarray(out[g]["std"])
            click.echo(f"{g}: {len(m)} channels over {out[g]['count']} values/channel; "
                       f"mean of means {m.mean():.6f}, mean std {s.mean():.6f}")
    if "alignment" in out:
        click.echo(f"fixed alignment statistics: {out['alignment']}")
    if official:
        g = gs[0]
        save_official_stats(official, out[g]["mean"], out[g]["std"])
        click.echo(f"wrote {official}")
