"""`svgfeat eval ...`: end-to-end evaluations (extract or reuse caches, fit heads, write a report)."""

import click

from ..evaluation.protocols import DEFAULT_PROTOCOL, PROTOCOLS
from ._common import encoder_options, precision_option
from ._types import K_LIST, LIMIT, POSITIVE, SIZE, TEMPERATURE, WORKERS
from .probe import probe_kwargs, probe_options

_PROTOCOL_HELP = ("Named protocol fixing transforms, train views, probe grid/schedule/normalisation/selection and "
                  "kNN settings; any option given below that differs is recorded as a deviation. "
                  + " ".join(f"{n}: {p.summary}." for n, p in PROTOCOLS.items()))


@click.group("eval")
def eval_group():
    """End-to-end evaluations on top of the shared feature cache."""


@eval_group.command("imagenet")
@click.option("--root", default=None,
              help="ImageNet root: train/<wnid>/*.JPEG + val/<wnid>/*.JPEG (or flat val/ + --val-labels), "
                   "imagenet1k-{train,validation}-*.tar (timm/imagenet-1k-wds), data/{train,validation}-*.parquet "
                   "(ILSVRC/imagenet-1k), or 'sample' for the embedded digits.")
@click.option("--train", "train_spec", default=None,
              help="Train source instead of --root: any `svgfeat extract` DATA (folder, R/train-{0000..0003}.tar, "
                   "'R/*.parquet', a save_to_disk folder, hf://datasets/ORG/NAME/train).")
@click.option("--val", "val_spec", default=None, help="Val source instead of --root (same forms as --train).")
@click.option("--protocol", default=DEFAULT_PROTOCOL, show_default=True, type=click.Choice(sorted(PROTOCOLS)),
              help=_PROTOCOL_HELP)
@encoder_options
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder: cache/train, cache/val (cache/train_eval for kNN when train views are "
                   "augmented), results.json, results.md, lr_curve.png.")
@click.option("--val-labels", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Label file for a flat val/ folder ('filename wnid' per line).")
@click.option("--size", default=None, type=SIZE,
              help="Input size of train and val (multiple of 16) [default: the protocol's: 224 dinov3/svg, 256 svgfeat].")
@click.option("--preset", default=None, type=click.Choice(["svg", "center-crop", "resize", "none", "rrc"]),
              help="Image transform of train AND val [default: the protocol's: dinov3/svg rrc train + "
                   "center-crop (256 -> 224) val; svgfeat svg (ADM centre crop)].")
@click.option("--batch-size", default=64, show_default=True, type=POSITIVE, help="Extraction batch size.")
@click.option("--workers", default=0, show_default=True, type=WORKERS, help="DataLoader workers for extraction.")
@click.option("--train-views", default=None, type=POSITIVE,
              help="Cached views per training image (the probe samples one per epoch) [default: the protocol's: "
                   "dinov3/svg 10 random-resized crops, svgfeat 1].")
@click.option("--limit", default=None, type=LIMIT, help="Only the first N images of each split (quick tries).")
@click.option("--features", default=None,
              help="Comma-separated probe feature specs; the first is the headline [default: the protocol's: "
                   "dinov3 cls+pooled, svg latent, svgfeat cls+pooled,latent].")
@click.option("--probe-batch-size", default=None, type=POSITIVE, help="Probe batch size [default: the protocol's: 1024].")
@probe_options(from_protocol=True)
@click.option("--no-knn", is_flag=True, help="Skip the kNN evaluation.")
@click.option("--knn-features", default=None,
              help="kNN feature spec [default: the protocol's: cls for dinov3/svgfeat, latent for svg].")
@click.option("-k", "ks", default=None, type=K_LIST, help="kNN neighbour counts [default: the protocol's: 10,20,100,200].")
@click.option("-T", "--temperature", default=None, type=TEMPERATURE, help="kNN temperature [default: the protocol's: 0.07].")
@click.option("--overwrite", is_flag=True,
              help="Rebuild caches under --out that hold a different extraction (another encoder, transform, "
                   "source ...) and replace report files svgfeat did not write; without it both are refused.")
@precision_option(("fp32", "bf16"), "Numerics of the extraction (recorded in the caches and results.json); "
                  "bf16: autocast. The probe and kNN run in fp32.")
def imagenet(root, train_spec, val_spec, protocol, dinov3, svg, svg_config, model, alignment, device, out, val_labels, size, preset,
             batch_size, workers, train_views, limit, features, probe_batch_size, epochs, iterations, min_iterations,
             lrs, optimizer, wd, select_on, heldout_fraction, normalize, standardize, seed, no_knn, knn_features, ks,
             temperature, overwrite, precision):
    """Linear probe + kNN on ImageNet-1K (or the embedded sample) under a named protocol."""
    from ..errors import ConfigError
    from ..evaluation.imagenet import run_imagenet_eval

    if root is None and (train_spec is None or val_spec is None):
        raise ConfigError("no data: pass --root R (an ImageNet root or 'sample') or --train SPEC --val SPEC")
    if root is not None and (train_spec or val_spec):
        raise ConfigError("--root and --train/--val exclude each other; pass one or the other")

    kw = probe_kwargs(epochs, iterations, min_iterations, lrs, optimizer, wd, select_on, heldout_fraction,
                      normalize, standardize, seed)
    kw["batch_size"] = probe_batch_size
    k = None
    if ks is not None:
        try:
            k = [int(v) for v in ks.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"-k: expected comma-separated integers, got {ks!r}") from None
    specs = None if features is None else [s.strip() for s in features.split(",") if s.strip()]
    res = run_imagenet_eval(root, out, protocol=protocol, dinov3=dinov3, svg=svg, svg_config=svg_config, model=model,
                            alignment=alignment, size=size, preset=preset, batch_size=batch_size, workers=workers,
                            train_views=train_views, device=device, features=specs, knn_features=knn_features,
                            val_labels=val_labels, limit=limit, probe_kwargs=kw, knn=not no_knn, knn_k=k,
                            temperature=temperature, overwrite=overwrite, train=train_spec, val=val_spec,
                            precision=precision)
    click.echo(f"protocol {res['protocol']}: {len(res['deviations'])} deviation(s) (see results.md)")
    for spec, r in res["features"].items():
        b = r["probe"]["best"]
        click.echo(f"{spec:>12}: linear top-1 {b['top1']:.2f}% top-5 {b['top5']:.2f}% ({b['head']})")
    if res.get("knn"):
        kn = res["knn"]
        kb = kn["k"].get("20") or kn["best"]
        click.echo(f"{'kNN ' + kn['features']:>12}: top-1 {kb['top1']:.2f}% (k={20 if '20' in kn['k'] else kn['best']['k']})")
    click.echo(f"selection: {res['note']}; features: {res['normalize']}")
    click.echo(f"-> {out}/results.json, results.md, lr_curve.png")
    t = res.get("timings") or {}
    if t:
        click.echo("stage timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
                   + f"; total {sum(t.values()):.1f}s")
    if res.get("notice"):
        click.echo(f"NOTE: {res['notice']}")
