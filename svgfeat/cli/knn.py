"""`svgfeat knn --train CACHE --val CACHE -o knn.json`: weighted kNN classification (DINO protocol)."""

import json

import click

from ..errors import ConfigError
from ..outputs import check_outputs
from ._common import overwrite_option, write_output
from ._types import DEVICE, K_LIST, TEMPERATURE


@click.command()
@click.option("--train", "train", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training feature cache (the neighbours).")
@click.option("--val", "val", required=True, type=click.Path(exists=True, file_okay=False),
              help="Validation feature cache (the queries).")
@click.option("--features", default="cls", show_default=True,
              help="Feature spec (see `svgfeat probe`); DINO's kNN protocol uses the CLS token.")
@click.option("-k", "ks", default="10,20,100,200", show_default=True, type=K_LIST, help="Comma-separated neighbour counts.")
@click.option("-T", "--temperature", default=0.07, show_default=True, type=TEMPERATURE, help="Vote weight exp(sim/T).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "faiss", "torch"]))
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="torch device of the torch backend.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Results JSON.")
@overwrite_option
def knn(train, val, features, ks, temperature, backend, device, out, overwrite):
    """Classify every val image by temperature-weighted votes of its k nearest train images."""
    import numpy as np

    from ..cache import check_compatible, open_cache
    from ..heads._features import aligned_labels, check_same_transform, eval_rows, feature_matrix
    from ..heads.knn import KNNClassifier

    try:
        k = [int(v) for v in ks.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"-k: expected comma-separated integers, got {ks!r}") from None
    check_outputs([out], overwrite, "results file")
    tr, va = open_cache(train), open_cache(val)
    check_compatible(tr.encoder_spec, va.encoder_spec, what="train/val cache encoder")
    check_same_transform(tr, va)
    clf = KNNClassifier(k=k, temperature=temperature, features=features, backend=backend, device=device,
                        progress=True).fit(tr)
    y = aligned_labels(tr, va)
    rows = np.flatnonzero(y != -1)
    if len(rows) == 0:
        raise ConfigError(f"the val cache {va.root} has no labels")
    fm = feature_matrix(va, features=features, rows=rows, progress=True)
    er = eval_rows(fm.sample_ids, fm.view_ids)
    res = clf.evaluate(fm.X[er], y[rows][er])
    res.update(train=str(tr.root), val=str(va.root), features=features)
    write_output(out, json.dumps(res, indent=2))
    for kk, v in res["k"].items():
        click.echo(f"k={kk:>4}: top-1 {v['top1']:.2f}%  top-5 {v['top5']:.2f}%")
    click.echo(f"-> {out}")
