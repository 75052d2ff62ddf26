"""`svgfeat probe --train CACHE --val CACHE -o results.json`: grid linear probe on cached features."""

import json

import click

from ..errors import ConfigError
from ._common import write_output
from ._types import DEVICE, POSITIVE


def parse_floats(text, name: str):
    """'1e-3,2e-3' -> [0.001, 0.002]; None stays None. Raises ConfigError naming the option."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"{name}: expected at least one number, got {text!r}")
    return vals


def probe_options(f):
    """Probe hyper-parameter options shared by `probe` and `eval imagenet`."""
    opts = [
        click.option("--epochs", default=10, show_default=True, type=int, help="Epochs over the train set."),
        click.option("--iterations", default=None, type=int,
                     help="Total SGD steps (overrides --epochs; DINOv3: 12500 at batch 1024)."),
        click.option("--min-iterations", default=1000, show_default=True, type=int,
                     help="Train at least this many steps (small datasets)."),
        click.option("--lrs", default=None,
                     help="Comma-separated base learning rates (default DINOv3's 13: 1e-5..0.1), scaled by batch/256."),
        click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"])),
        click.option("--wd", "wd", default="0", show_default=True, help="Comma-separated weight-decay grid."),
        click.option("--select-on", default="heldout", show_default=True, type=click.Choice(["heldout", "val"]),
                     help="Pick the best head on a held-out split of train (unbiased) or on val (DINOv3 protocol)."),
        click.option("--heldout-fraction", default=0.1, show_default=True, type=float),
        click.option("--standardize", is_flag=True, help="Z-score features with train statistics."),
        click.option("--seed", default=0, show_default=True, type=int),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def probe_kwargs(epochs, iterations, min_iterations, lrs, optimizer, wd, select_on, heldout_fraction, standardize,
                 seed) -> dict:
    return dict(epochs=epochs, iterations=iterations, min_iterations=min_iterations, lrs=parse_floats(lrs, "--lrs"),
                optimizer=optimizer, weight_decays=parse_floats(wd, "--wd"), select_on=select_on,
                heldout_fraction=heldout_fraction, standardize=standardize, random_state=seed)


@click.command()
@click.option("--train", "train", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training feature cache.")
@click.option("--val", "val", default=None, type=click.Path(exists=True, file_okay=False),
              help="Validation feature cache (reported; used for selection only with --select-on val).")
@click.option("--features", default="cls+pooled", show_default=True,
              help="Feature spec: cls, pooled, cls+pooled, latent, last4, cls_l<i>+... (joined with '+').")
@click.option("--batch-size", default=1024, show_default=True, type=POSITIVE)
@probe_options
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="torch device, e.g. cpu or cuda:0.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Results JSON.")
def probe(train, val, features, batch_size, epochs, iterations, min_iterations, lrs, optimizer, wd, select_on,
          heldout_fraction, standardize, seed, device, out):
    """Train a grid of linear heads (one per lr x wd) on cached features and report top-1/top-5."""
    import numpy as np

    from ..cache import check_compatible, open_cache
    from ..heads._features import aligned_labels, check_same_transform, feature_matrix
    from ..heads.probe import LinearProbe

    kw = probe_kwargs(epochs, iterations, min_iterations, lrs, optimizer, wd, select_on, heldout_fraction,
                      standardize, seed)
    if select_on == "val" and val is None:
        raise ConfigError("--select-on val needs --val CACHE")
    tr = open_cache(train)
    p = LinearProbe(features=features, batch_size=batch_size, device=device, progress=True, **kw)
    fit_kw = {}
    if val is not None:
        va = open_cache(val)
        check_compatible(tr.encoder_spec, va.encoder_spec, what="train/val cache encoder")
        check_same_transform(tr, va)
        y = aligned_labels(tr, va)
        rows = np.flatnonzero(y != -1)
        fm = feature_matrix(va, features=features, rows=rows, progress=True)
        fit_kw = dict(X_val=fm.X, y_val=y[rows])
    p.fit(tr, **fit_kw)
    rep = p.report()
    rep.update(train=str(tr.root), val=None if val is None else str(va.root), features=features)
    write_output(out, json.dumps(rep, indent=2))
    b = rep["best"]
    click.echo(f"best head {b['head']}: top-1 {b['top1']:.2f}%  top-5 {b['top5']:.2f}% on {b['split']} "
               f"(selected on {rep['selection']}) -> {out}")
