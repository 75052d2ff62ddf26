"""`svgfeat stats CACHE`: exact per-channel statistics (and fixed-alignment statistics)."""

import click

from ._types import NonEmptyPath


def _renamed(ctx, param, value):
    if value is not None:
        raise click.UsageError("--official was renamed --write-official PATH (it writes PATH); nothing was written")
    return value


@click.command()
@click.argument("path", type=NonEmptyPath(exists=True, file_okay=False))
@click.option("--groups", default="latent", show_default=True, help="Comma-separated groups.")
@click.option("--write-official", "official", type=click.Path(dir_okay=False), default=None,
              help="Also WRITE the official dinov3_sp_stats.pt format of the first group to this path.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --write-official file svgfeat did not write.")
@click.option("--official", "old_official", hidden=True, expose_value=False, callback=_renamed, is_eager=True)
def stats(path, groups, official, overwrite):
    """Compute per-channel mean/std of cache groups in one streaming pass; saved in CACHE/stats.json."""
    from ..atomic import check_output
    from ..cache.stats import compute_stats, save_official_stats

    if official:
        check_output(official, overwrite, "--write-official file")
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
