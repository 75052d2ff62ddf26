"""`svgfeat probe --train CACHE --val CACHE -o results.json`: grid linear probe on cached features."""

import json

import click

from ..errors import ConfigError
from ..outputs import check_outputs
from ._common import overwrite_option, write_output
from ._types import DEVICE, LR_LIST, POSITIVE, SEED, STEPS, WD_LIST, Real


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


NORMALIZE_HELP = ("Feature normalisation before the linear heads: zscore (train mean/std), none (raw features, "
                  "DINOv3) or batchnorm (BatchNorm without affine, MAE; running stats at eval).")


def _probe_option_list(from_protocol: bool):
    """Probe hyper-parameter options. from_protocol: every default is None (= the --protocol's value,
    so that `eval imagenet` can record overrides as deviations)."""
    def d(value):
        return dict(default=None) if from_protocol else dict(default=value, show_default=True)

    tail = " [default: the protocol's]" if from_protocol else ""
    return [
        click.option("--epochs", type=STEPS, help="Epochs over the train set." + tail, **d(10)),
        click.option("--iterations", default=None, type=STEPS,
                     help="Total SGD steps (overrides --epochs; DINOv3: 12500 at batch 1024)." + tail),
        click.option("--min-iterations", type=STEPS, help="Train at least this many steps (small datasets)." + tail,
                     **d(1000)),
        click.option("--lrs", default=None, type=LR_LIST,
                     help="Comma-separated base learning rates (default DINOv3's 13: 1e-5..0.1), scaled by batch/256."),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), help="Optimizer." + tail, **d("sgd")),
        click.option("--wd", "wd", type=WD_LIST, help="Comma-separated weight-decay grid." + tail, **d("0")),
        click.option("--select-on", type=click.Choice(["heldout", "val"]),
                     help="Pick the best head on a held-out split of train (unbiased) or on val (DINOv3 protocol)."
                          + tail, **d("heldout")),
        click.option("--heldout-fraction", type=Real(0, 1, "a fraction", lo_open=True, hi_open=True), help="Share of train held out for selection." + tail,
                     **d(0.1)),
        click.option("--normalize", type=click.Choice(["zscore", "none", "batchnorm"]),
                     help=NORMALIZE_HELP + (" [default: the protocol's: svgfeat zscore, dinov3/svg none]"
                                            if from_protocol else ""), **d("zscore")),
        click.option("--standardize", is_flag=True, hidden=True, help="Alias of --normalize zscore."),
        click.option("--seed", type=SEED, help="Seed of the split, batch order and crops.", **d(0)),
    ]


def probe_options(f=None, *, from_protocol: bool = False):
    """Decorator adding the probe options shared by `probe` and `eval imagenet`."""
    def deco(fn):
        for o in reversed(_probe_option_list(from_protocol)):
            fn = o(fn)
        return fn

    return deco(f) if f is not None else deco


def probe_kwargs(epochs, iterations, min_iterations, lrs, optimizer, wd, select_on, heldout_fraction, normalize,
                 standardize, seed) -> dict:
    """LinearProbe keyword arguments from the CLI values (None values stay None = protocol default)."""
    if standardize:
        if normalize not in (None, "zscore"):
            raise ConfigError(f"--standardize means --normalize zscore, but --normalize {normalize} was given")
        normalize = "zscore"
    return dict(epochs=epochs, iterations=iterations, min_iterations=min_iterations, lrs=parse_floats(lrs, "--lrs"),
                optimizer=optimizer, weight_decays=parse_floats(wd, "--wd"), select_on=select_on,
                heldout_fraction=heldout_fraction, normalize=normalize, random_state=seed)


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
@overwrite_option
def probe(train, val, features, batch_size, epochs, iterations, min_iterations, lrs, optimizer, wd, select_on,
          heldout_fraction, normalize, standardize, seed, device, out, overwrite):
    """Train a grid of linear heads (one per lr x wd) on cached features and report top-1/top-5."""
    from ..cache import check_compatible, open_cache
    from ..heads._features import aligned_labels, check_same_transform
    from ..heads.probe import LinearProbe

    kw = probe_kwargs(epochs, iterations, min_iterations, lrs, optimizer, wd, select_on, heldout_fraction,
                      normalize, standardize, seed)
    if select_on == "val" and val is None:
        raise ConfigError("--select-on val needs --val CACHE")
    check_outputs([out], overwrite, "results file")
    tr = open_cache(train)
    p = LinearProbe(features=features, batch_size=batch_size, device=device, progress=True, **kw)
    fit_kw = {}
    if val is not None:
        va = open_cache(val)
        check_compatible(tr.encoder_spec, va.encoder_spec, what="train/val cache encoder")
        check_same_transform(tr, va)
        if not (aligned_labels(tr, va) != -1).any():
            raise ConfigError(f"the val cache {va.root} has no labels")
        fit_kw = dict(X_val=va)  # read in blocks, its unlabelled rows skipped, labels matched to train by name
    p.fit(tr, **fit_kw)
    rep = p.report()
    rep.update(train=str(tr.root), val=None if val is None else str(va.root), features=features)
    write_output(out, json.dumps(rep, indent=2))
    b = rep["best"]
    click.echo(f"best head {b['head']}: top-1 {b['top1']:.2f}%  top-5 {b['top5']:.2f}% on {b['split']} "
               f"(selected on {rep['selection']}; features {rep['normalize']}) -> {out}")
