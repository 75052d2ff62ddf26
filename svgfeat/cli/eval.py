"""`svgfeat eval ...`: end-to-end evaluations (extract or reuse caches, fit heads, write a report)."""

import click

from ._common import encoder_options
from ._types import LIMIT, POSITIVE, SIZE, WORKERS
from .probe import probe_kwargs, probe_options


@click.group("eval")
def eval_group():
    """End-to-end evaluations on top of the shared feature cache."""


@eval_group.command("imagenet")
@click.option("--root", required=True,
              help="ImageNet root (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG or flat val/ + --val-labels) "
                   "or 'sample' for the embedded digits.")
@encoder_options
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder: cache/train, cache/val, results.json, results.md, lr_curve.png.")
@click.option("--val-labels", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Label file for a flat val/ folder ('filename wnid' per line).")
@click.option("--size", default=256, show_default=True, type=SIZE, help="Input size (multiple of 16).")
@click.option("--preset", default="svg", show_default=True,
              type=click.Choice(["svg", "center-crop", "resize", "none"]),
              help="Image transform (svg: ADM centre crop at --size; center-crop: DINOv3 eval resize+crop).")
@click.option("--batch-size", default=64, show_default=True, type=POSITIVE, help="Extraction batch size.")
@click.option("--workers", default=0, show_default=True, type=WORKERS, help="DataLoader workers for extraction.")
@click.option("--train-views", default=1, show_default=True, type=POSITIVE,
              help="Cached views per training image (>1: flip / random crops; the probe samples one per epoch).")
@click.option("--limit", default=None, type=LIMIT, help="Only the first N images of each split (quick tries).")
@click.option("--features", default="cls+pooled,latent", show_default=True,
              help="Comma-separated feature specs; the first is the headline (DINOv3: cls+pooled).")
@click.option("--probe-batch-size", default=1024, show_default=True, type=POSITIVE)
@probe_options
@click.option("--no-knn", is_flag=True, help="Skip the kNN evaluation.")
@click.option("-k", "ks", default="10,20,100,200", show_default=True, help="kNN neighbour counts.")
@click.option("-T", "--temperature", default=0.07, show_default=True, type=float)
def imagenet(root, dinov3, svg, svg_config, model, alignment, device, out, val_labels, size, preset, batch_size,
             workers, train_views, limit, features, probe_batch_size, epochs, iterations, min_iterations, lrs,
             optimizer, wd, select_on, heldout_fraction, standardize, seed, no_knn, ks, temperature):
    """Linear probe + kNN on ImageNet-1K (or the embedded sample) with the DINOv3 protocol."""
    from ..errors import ConfigError
    from ..evaluation.imagenet import run_imagenet_eval

    kw = probe_kwargs(epochs, iterations, min_iterations, lrs, optimizer, wd, select_on, heldout_fraction,
                      standardize, seed)
    kw["batch_size"] = probe_batch_size
    try:
        k = [int(v) for v in ks.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"-k: expected comma-separated integers, got {ks!r}") from None
    specs = [s.strip() for s in features.split(",") if s.strip()]
    res = run_imagenet_eval(root, out, dinov3=dinov3, svg=svg, svg_config=svg_config, model=model,
                            alignment=alignment, size=size, preset=preset, batch_size=batch_size, workers=workers,
                            train_views=train_views, device=device, features=specs, val_labels=val_labels,
                            limit=limit, probe_kwargs=kw, knn=not no_knn, knn_k=k, temperature=temperature)
    for spec, r in res["features"].items():
        b = r["probe"]["best"]
        line = f"{spec:>12}: linear top-1 {b['top1']:.2f}% top-5 {b['top5']:.2f}% ({b['head']})"
        if r.get("knn"):
            kb = r["knn"]["k"].get("20") or r["knn"]["best"]
            line += f" | kNN k=20 top-1 {kb['top1']:.2f}%"
        click.echo(line)
    click.echo(f"selection: {res['note']}")
    click.echo(f"-> {out}/results.json, results.md, lr_curve.png")
    if res.get("notice"):
        click.echo(f"NOTE: {res['notice']}")
