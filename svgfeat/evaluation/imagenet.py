"""``svgfeat eval imagenet``: extract (or reuse) train/val caches, run the linear probe and kNN, report.

Layout of ``root``: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (or a flat ``ROOT/val``
plus a ``filename wnid`` label file given as ``val_labels``). ``root="sample"`` uses the embedded digits
(train = ``sample:digits/train``, val = ``sample:digits/val``). Caches go to ``OUT/cache/train`` and
``OUT/cache/val``; :func:`svgfeat.extract` reuses a complete matching cache without running the encoder.
Outputs: ``OUT/results.json``, ``OUT/results.md`` and ``OUT/lr_curve.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..heads._features import aligned_labels, eval_rows, feature_matrix, groups_for_spec, parse_spec
from .report import markdown_report, plot_lr_curve

DEFAULT_FEATURES = ("cls+pooled", "latent")
DEFAULT_RANDOM_MODEL = "random_svg_vits16plus"  # root="sample" without weights: full SVG-S+ architecture, seeded
RANDOM_NOTICE = ("weights are RANDOM ({model}, fixed seed): these numbers only show that the pipeline works; "
                 "add --pretrained for the released weights (or pass --dinov3/--svg)")
BASE_EXTRACT_GROUPS = ("latent", "cls", "pooled")


def resolve_datasets(root, val_labels=None):
    """(train, val) dataset specs / Datasets for an ImageNet-style root or ``"sample"``."""
    from ..data import open_dataset

    if str(root) == "sample":
        return "sample:digits/train", "sample:digits/val"
    r = Path(root)
    train, val = r / "train", r / "val"
    if not train.is_dir() or not val.is_dir():
        raise DataError(f"{r} is not an ImageNet-style root: expected folders {train} and {val} "
                        "(train/<wnid>/*.JPEG, val/<wnid>/*.JPEG or a flat val/ with --val-labels)")
    train_ds = open_dataset(train)
    if not train_ds.classes:
        raise DataError(f"{train} has no class sub-folders (expected train/<wnid>/*.JPEG)")
    has_dirs = any(d.is_dir() and not d.name.startswith(".") for d in val.iterdir())
    if val_labels is not None:
        val_ds = open_dataset(val, labels=val_labels, classes=train_ds.classes)
    elif has_dirs:
        val_ds = open_dataset(val)
    else:
        raise DataError(f"{val} is a flat folder without class sub-folders; pass the ground-truth file with "
                        "--val-labels FILE ('filename wnid' per line)")
    return train_ds, val_ds


def extraction_groups(features, depth: int | None) -> list[str]:
    """Groups to extract: latent, cls, pooled plus whatever the feature specs need (cls_l<i> ...)."""
    out = list(BASE_EXTRACT_GROUPS)
    for spec in features:
        out += groups_for_spec(spec, depth or 0)
    return list(dict.fromkeys(out))


def run_imagenet_eval(root, out, *, dinov3=None, svg=None, svg_config=None, model=None, alignment="batch",
                      size: int = 256, preset: str = "svg", batch_size: int = 64, workers: int = 0,
                      train_views: int = 1, device="cpu", features=DEFAULT_FEATURES, val_labels=None,
                      limit: int | None = None, probe_kwargs: dict | None = None, knn: bool = True,
                      knn_k=(10, 20, 100, 200), temperature: float = 0.07, progress: bool = True) -> dict:
    """Run the whole evaluation; returns the results dict also written to ``out/results.json``."""
    from .. import extract
    from ..cache import check_compatible
    from ..heads.knn import KNNClassifier
    from ..heads.probe import LinearProbe

    out = Path(out)
    features = [features] if isinstance(features, str) else list(features)
    if not features:
        raise ConfigError("no feature specs given (e.g. --features cls+pooled,latent)")
    for spec in features:
        parse_spec(spec)
    if dinov3 is None and svg is None and model is None:
        if str(root) != "sample":
            raise ConfigError("no encoder: pass --pretrained (released weights from the Hugging Face Hub), --dinov3 "
                              "PATH (and --svg PATH for SVG features), or --model NAME for a registered model")
        model = DEFAULT_RANDOM_MODEL
    notice = None
    if dinov3 is None and svg is None and str(model).startswith(("test_", "random_")):
        notice = RANDOM_NOTICE.format(model=model)
        if progress:
            print(f"note: {notice}")
    timings: dict[str, float] = {}
    t = time.time()
    train_data, val_data = resolve_datasets(root, val_labels)
    depth = None
    if any(tm.startswith("last") for s in features for tm in parse_spec(s)):
        from ..models.svg import load_encoder

        depth = load_encoder(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model).backbone.depth
    groups = extraction_groups(features, depth)
    common = dict(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model, alignment=alignment,
                  groups=groups, size=size, preset=preset, batch_size=batch_size, workers=workers,
                  device=device, limit=limit, progress=progress)
    train_cache = extract(train_data, out / "cache" / "train", views=train_views, **common)
    timings["extract_train"] = time.time() - t
    t = time.time()
    val_cache = extract(val_data, out / "cache" / "val", views=1, **common)
    timings["extract_val"] = time.time() - t
    check_compatible(train_cache.encoder_spec, val_cache.encoder_spec, what="train/val cache encoder")
    y_val_all = aligned_labels(train_cache, val_cache)
    labelled = np.flatnonzero(y_val_all != -1)
    if len(labelled) == 0:
        raise DataError(f"the val set {val_cache.root} has no labels")

    per_spec: dict[str, dict] = {}
    for spec in features:
        t = time.time()
        tr = feature_matrix(train_cache, features=spec, progress=progress)
        va = feature_matrix(val_cache, features=spec, rows=labelled, progress=progress)
        yv = y_val_all[labelled]
        kw = dict(probe_kwargs or {})
        kw.setdefault("device", device)
        probe = LinearProbe(features=spec, progress=progress, **kw)
        probe.fit(tr.X, tr.y, sample_ids=tr.sample_ids, view_ids=tr.view_ids, X_val=va.X, y_val=yv)
        rep = probe.report()
        rep["config"]["feature_groups"] = tr.groups
        entry = {"probe": rep}
        timings[f"probe[{spec}]"] = time.time() - t
        if knn:
            t = time.time()
            rows = eval_rows(tr.sample_ids, tr.view_ids)
            kc = KNNClassifier(k=knn_k, temperature=temperature, features=spec, device=device, progress=progress)
            entry["knn"] = kc.fit(tr.X[rows], tr.y[rows]).evaluate(va.X, yv)
            timings[f"knn[{spec}]"] = time.time() - t
        per_spec[spec] = entry

    primary = per_spec[features[0]]["probe"]
    enc = {k: v for k, v in train_cache.encoder_spec.items() if k != "fixed_stats"}
    results = {
        "task": "imagenet" if str(root) != "sample" else "imagenet-protocol on sample:digits",
        "root": str(root),
        "train": {"data": str(getattr(train_data, "spec", train_data)), "rows": len(train_cache),
                  "cache": str(train_cache.root), "classes": len(train_cache.classes)},
        "val": {"data": str(getattr(val_data, "spec", val_data)), "rows": len(val_cache),
                "evaluated": int(len(labelled)), "cache": str(val_cache.root)},
        "encoder": enc, "transform": train_cache.transform, "primary_features": features[0],
        "best": primary["best"], "selection": primary["selection"], "note": primary["note"],
        "heads": primary["heads"], "features": per_spec, "timings": timings,
        "weights": "random" if notice else "loaded", **({"notice": notice} if notice else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    md = markdown_report(results)
    if notice:  # right under the title
        md = md.replace("\n", f"\n\n> **Note:** {notice}.\n", 1)
    (out / "results.md").write_text(md)
    plot_lr_curve(lr_series(per_spec), out / "lr_curve.png")
    return results


def lr_series(per_spec: dict) -> dict:
    """{label: [(scaled lr, top-1 %), ...]} per feature spec (and weight decay), for val and held-out."""
    series = {}
    for spec, r in per_spec.items():
        heads = r["probe"]["heads"]
        wds = sorted({h["wd"] for h in heads})
        for wd in wds:
            tag = spec if len(wds) == 1 else f"{spec} wd={wd:g}"
            hs = [h for h in heads if h["wd"] == wd]
            for key, name in (("val_top1", "val"), ("heldout_top1", "held-out")):
                if any(key in h for h in hs):
                    series[f"{tag} {name}"] = [(h["lr"], h.get(key)) for h in hs]
    return series


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
