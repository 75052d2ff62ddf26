"""``svgfeat eval imagenet``: extract (or reuse) train/val caches, run the linear probe and kNN, report.

The protocol (``protocol="dinov3" | "svg" | "svgfeat"``, :mod:`svgfeat.evaluation.protocols`) fixes the
transforms, train views, probe and kNN settings; overrides are recorded as deviations. The kNN runs on
its own features (the protocol's ``knn_features``, CLS for dinov3/svgfeat), with the train images through
the val (eval) transform: when the train cache holds augmented views, a third cache
``OUT/cache/train_eval`` holds them.

Layouts of ``root``: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (or a flat ``ROOT/val``
plus a ``filename wnid`` label file given as ``val_labels``); WebDataset shards
``ROOT/imagenet1k-{train,validation}-*.tar`` (``timm/imagenet-1k-wds``); parquet files
``ROOT/data/{train,validation}-*.parquet`` (``ILSVRC/imagenet-1k``). ``train``/``val`` take any
:func:`svgfeat.open_dataset` source instead. ``root="sample"`` uses the embedded digits
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
from .protocols import DEFAULT_PROTOCOL, deviation, resolve, scale_steps_to_data, scale_views_to_data
from .report import markdown_report, plot_lr_curve

DEFAULT_RANDOM_MODEL = "random_svg_vits16plus"  # root="sample" without weights: full SVG-S+ architecture, seeded
RANDOM_NOTICE = ("weights are RANDOM ({model}, fixed seed): these numbers only show that the pipeline works; "
                 "add --pretrained for the released weights (or pass --dinov3/--svg)")
BASE_EXTRACT_GROUPS = ("latent", "cls", "pooled")
SAMPLE_LIMIT = 200  # root="sample" without --limit: 200 train + 200 val digits, every stage within about a minute


ROOT_LAYOUTS = (("imagenet1k-train-*.tar", "imagenet1k-validation-*.tar"),
                ("data/train-*.parquet", "data/validation-*.parquet"))


def _labelled(ds, what):
    if not ds.classes or not (ds.labels >= 0).any():
        raise DataError(f"the {what} source {ds.spec} has no labels (expected class folders, .cls members or a "
                        "label column)")
    return ds


def resolve_datasets(root, val_labels=None, train=None, val=None):
    """(train, val) dataset specs / Datasets for an ImageNet-style root (folders, tar shards or parquet,
    see :data:`ROOT_LAYOUTS`), ``"sample"``, or explicit ``train`` / ``val`` sources."""
    from ..data import open_dataset

    if (train is None) != (val is None):
        raise ConfigError("--train and --val go together (each any source: folder, tars, parquet, hf://...)")
    if train is not None:
        train_ds = _labelled(open_dataset(train), "train")
        val_ds = open_dataset(val, labels=val_labels, classes=train_ds.classes)
        return train_ds, val_ds
    if root is None:
        raise ConfigError("no data: pass --root R (an ImageNet root) or --train SPEC --val SPEC")
    if str(root) == "sample":
        return "sample:digits/train", "sample:digits/val"
    r = Path(root)
    train, val = r / "train", r / "val"
    if r.is_dir() and not (train.is_dir() and val.is_dir()):
        for tr, va in ROOT_LAYOUTS:
            if any(r.glob(tr)) and any(r.glob(va)):
                return _labelled(open_dataset(str(r / tr)), "train"), _labelled(open_dataset(str(r / va)), "val")
    if not train.is_dir() or not val.is_dir():
        raise DataError(f"{r} is not an ImageNet-style root: expected folders {train} and {val} "
                        "(train/<wnid>/*.JPEG, val/<wnid>/*.JPEG or a flat val/ with --val-labels), tar shards "
                        f"{r}/imagenet1k-{{train,validation}}-*.tar or parquet files "
                        f"{r}/data/{{train,validation}}-*.parquet")
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


REPORT_FILES = ("results.json", "results.md", "lr_curve.png")


def run_imagenet_eval(root, out, *, protocol: str = DEFAULT_PROTOCOL, dinov3=None, svg=None, svg_config=None,
                      model=None, alignment="batch", size: int | None = None, preset: str | None = None,
                      batch_size: int = 64, workers: int = 0, train_views: int | None = None, device="cpu",
                      features=None, knn_features: str | None = None, val_labels=None, limit: int | None = None,
                      probe_kwargs: dict | None = None, knn: bool = True, knn_k=None, temperature: float | None = None,
                      progress: bool = True, overwrite: bool = False, train=None, val=None,
                      precision: str = "fp32") -> dict:
    """Run the whole evaluation under a named protocol (see :mod:`svgfeat.evaluation.protocols`);
    returns the results dict also written to ``out/results.json``.

    Every argument left at None takes the protocol's value; any other value that differs from the
    protocol is listed in ``results["deviations"]``. ``size`` / ``preset`` override both the train and
    the val transform. ``probe_kwargs``: LinearProbe settings (lrs, weight_decays, optimizer, batch_size,
    iterations, epochs, min_iterations, schedule, normalize, select_on, heldout_fraction, random_state).

    The caches under ``out/cache`` follow :func:`svgfeat.extract`'s rule: reused only when the whole request
    matches (encoder name, family and every weight sha256, transform, precision, groups, views, source and
    limit), otherwise refused with the difference named; ``overwrite`` rebuilds them. ``precision``: the numerics of
    the extraction (fp32 default; bf16 autocast), recorded as results.json's ``numerics``. The report files
    (results.json, results.md, lr_curve.png) are checked before any work: an existing one svgfeat did not
    write is refused unless ``overwrite``.
    """
    from ..atomic import write_bytes_atomic
    from ..cache import check_compatible
    from ..extraction import extract
    from ..heads.knn import KNNClassifier
    from ..heads.probe import LinearProbe
    from ..outputs import check_outputs

    out = Path(out)
    check_outputs([out / n for n in REPORT_FILES], overwrite, "report file")
    pk = dict(probe_kwargs or {})
    if "batch_size" in pk:
        pk["probe_batch_size"] = pk.pop("batch_size")
    seed = int(pk.pop("random_state", 0) or 0)
    progress_probe = pk.pop("progress", progress)
    pk.pop("device", None)
    features = [features] if isinstance(features, str) else (None if features is None else list(features))
    if features is not None and not features:
        raise ConfigError("no feature specs given (e.g. --features cls+pooled,latent)")
    proto, st, deviations = resolve(
        protocol, train_preset=preset, val_preset=preset, train_size=size, val_size=size, train_views=train_views,
        features=features, knn_features=knn_features, knn_k=None if knn_k is None else tuple(int(k) for k in knn_k),
        temperature=temperature, **{k: pk.get(k) for k in PROBE_SETTINGS})
    features = list(st["features"])
    for spec in features + [st["knn_features"]]:
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
    sample_default = str(root) == "sample" and limit is None
    if sample_default:
        limit = SAMPLE_LIMIT
    deviations += data_deviations(root, limit, dinov3, svg, model, needs_svg=proto.name != "dinov3",
                                  sample_default=sample_default)
    timings: dict[str, float] = {}
    t = time.time()
    train_data, val_data = resolve_datasets(root, val_labels, train, val)
    deviations += scale_views_to_data(st, _train_images(train_data, limit),
                                      given={"train_views"} if train_views is not None else set())
    depth = None
    if any(tm.startswith("last") for s in features + [st["knn_features"]] for tm in parse_spec(s)):
        from ..models.build import load_encoder

        depth = load_encoder(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model).backbone.depth
    groups = extraction_groups(features + [st["knn_features"]], depth)
    common = dict(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model, alignment=alignment,
                  groups=groups, batch_size=batch_size, workers=workers, device=device, limit=limit,
                  progress=progress, protocol=proto.name, overwrite=overwrite, precision=precision)
    train_cache = extract(train_data, out / "cache" / "train", views=int(st["train_views"]), view_seed=seed,
                          preset=st["train_preset"], size=int(st["train_size"]), **common)
    timings["extract_train"] = time.time() - t
    t = time.time()
    val_cache = extract(val_data, out / "cache" / "val", views=1, preset=st["val_preset"], size=int(st["val_size"]),
                        **common)
    timings["extract_val"] = time.time() - t
    check_compatible(train_cache.encoder_spec, val_cache.encoder_spec, what="train/val cache encoder")
    # kNN neighbours: the train images through the *eval* transform, one view (DINO's kNN protocol); a
    # deterministic train preset equal to val's already holds it as view 0 (the rows kNN uses)
    same = (st["train_preset"], st["train_size"]) == (st["val_preset"], st["val_size"]) and st["train_preset"] != "rrc"
    if same:
        knn_cache = train_cache
    elif knn:
        t = time.time()
        knn_cache = extract(train_data, out / "cache" / "train_eval", views=1, preset=st["val_preset"],
                            size=int(st["val_size"]), **common)
        timings["extract_train_eval"] = time.time() - t
    y_val_all = aligned_labels(train_cache, val_cache)
    labelled = np.flatnonzero(y_val_all != -1)
    if len(labelled) == 0:
        raise DataError(f"the val set {val_cache.root} has no labels")
    yv = y_val_all[labelled]
    images = len(np.unique(train_cache.sample_ids))
    deviations += scale_steps_to_data(st, images, given={k for k in PROBE_SETTINGS if pk.get(k) is not None})

    probe_kw = dict(lrs=st["lrs"], weight_decays=st["weight_decays"], optimizer=st["optimizer"],
                    batch_size=int(st["probe_batch_size"]), iterations=st["iterations"], epochs=int(st["epochs"]),
                    min_iterations=int(st["min_iterations"] or 0), schedule=st["schedule"],
                    normalize=st["normalize"], select_on=st["select_on"], heldout_fraction=st["heldout_fraction"],
                    random_state=seed, device=device, progress=progress_probe)
    per_spec: dict[str, dict] = {}
    for spec in features:
        t = time.time()
        tr = feature_matrix(train_cache, features=spec, progress=progress)
        if (tr.y == -1).any():  # -1 marks an unlabelled cache row; as an array label it would be a class
            raise DataError(f"{int((tr.y == -1).sum())} rows of the train cache {train_cache.root} are unlabelled")
        va = feature_matrix(val_cache, features=spec, rows=labelled, progress=progress)
        probe = LinearProbe(features=spec, **probe_kw)
        probe.fit(tr.X, tr.y, sample_ids=tr.sample_ids, view_ids=tr.view_ids, X_val=va.X, y_val=yv)
        rep = probe.report()
        rep["config"]["feature_groups"] = tr.groups
        per_spec[spec] = {"probe": rep}
        timings[f"probe[{spec}]"] = time.time() - t
    deviations += run_deviations(st, per_spec[features[0]]["probe"])

    knn_res = None
    if knn:
        t = time.time()
        spec = st["knn_features"]
        ytr = aligned_labels(train_cache, knn_cache) if knn_cache is not train_cache else train_cache.labels
        trk = feature_matrix(knn_cache, features=spec, progress=progress)
        rows = eval_rows(trk.sample_ids, trk.view_ids)
        rows = rows[np.asarray(ytr)[rows] >= 0]  # unlabelled (-1) / unknown-class (-2) cache rows never vote
        vak = feature_matrix(val_cache, features=spec, rows=labelled, progress=progress)
        kc = KNNClassifier(k=st["knn_k"], temperature=float(st["temperature"]), features=spec, device=device,
                           progress=progress)
        knn_res = {"features": spec, "train_cache": str(knn_cache.root),
                   "train_transform": st["val_preset"] if not same else st["train_preset"],
                   **kc.fit(trk.X[rows], np.asarray(ytr)[rows]).evaluate(vak.X, yv)}
        if list(kc.ks_) != sorted(int(k) for k in st["knn_k"]):
            deviations.append(deviation("knn_k_used", sorted(int(k) for k in st["knn_k"]), list(kc.ks_),
                                        "k clipped to the number of training images"))
        timings[f"knn[{spec}]"] = time.time() - t

    primary = per_spec[features[0]]["probe"]
    enc = {k: v for k, v in train_cache.encoder_spec.items() if k != "fixed_stats"}
    results = {
        "task": "imagenet" if str(root) != "sample" else "imagenet-protocol on sample:digits",
        "protocol": proto.name, "protocol_summary": proto.summary, "protocol_source": proto.source,
        "protocol_settings": _jsonable(proto.settings), "settings": _jsonable(st),
        "deviations": _jsonable(deviations), "unknown": list(proto.unknown), "inherent": list(proto.inherent),
        "reference_numbers": proto.reference_numbers,
        "root": None if root is None else str(root),
        "train": {"data": str(getattr(train_data, "spec", train_data)), "rows": len(train_cache),
                  "views": int(train_cache.manifest.get("views", 1)), "view_seed": train_cache.manifest.get("view_seed"),
                  "cache": str(train_cache.root), "classes": len(train_cache.classes),
                  "transform": train_cache.transform},
        "val": {"data": str(getattr(val_data, "spec", val_data)), "rows": len(val_cache),
                "evaluated": int(len(labelled)), "cache": str(val_cache.root), "transform": val_cache.transform},
        "encoder": enc, "numerics": train_cache.manifest.get("numerics"),  # how the features were computed
        "head_numerics": primary.get("numerics"),  # how the probe / kNN heads were computed
        "transform": val_cache.transform, "primary_features": features[0],
        "normalize": primary["normalize"], "normalize_note": primary["normalize_note"],
        "best": primary["best"], "selection": primary["selection"], "note": primary["note"],
        "heads": primary["heads"], "features": per_spec, "knn": knn_res, "timings": timings,
        "weights": "random" if notice else "loaded", **({"notice": notice} if notice else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    plot_lr_curve(lr_series(per_spec), out / "lr_curve.png")
    timings["report"] = time.time() - t
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=2, default=_json_default).encode())
    md = markdown_report(results)
    if notice:  # right under the title
        md = md.replace("\n", f"\n\n> **Note:** {notice}.\n", 1)
    write_bytes_atomic(out / "results.md", md.encode())
    return results


def _train_images(train_data, limit) -> int:
    """Images the train split will hold (the dataset's length, capped by ``limit``)."""
    from ..data import open_dataset

    n = len(open_dataset(train_data) if isinstance(train_data, str) else train_data)
    return min(n, int(limit)) if limit is not None else n


PROBE_SETTINGS = ("lrs", "weight_decays", "optimizer", "probe_batch_size", "iterations", "epochs", "min_iterations",
                  "schedule", "normalize", "select_on", "heldout_fraction")


def data_deviations(root, limit, dinov3, svg, model, needs_svg: bool = True, sample_default: bool = False) -> list[dict]:
    """Deviations of the data and weights from any ImageNet-1K protocol (``needs_svg``: the protocol's
    features include the trained SVG residual encoder; ``sample_default``: the limit is the sample's default)."""
    out = []
    if str(root) == "sample":
        out.append(deviation("data", "ImageNet-1K (1.28M train / 50k val)", "sample:digits",
                             "embedded 8x8 digits upscaled: a smoke test of the protocol, not an ImageNet number"))
    if limit is not None:
        out.append(deviation("limit", None, int(limit), f"the sample's quick default: the first {limit} images of each "
                             "split (the sample has 1,438 train / 359 val; --limit 1438 for all)" if sample_default
                             else "only the first N images of each split"))
    want = "DINOv3 ViT-S/16+ LVD-1689M" + (" + trained SVG residual encoder" if needs_svg else "")
    if dinov3 is None:
        out.append(deviation("weights", want, f"random weights ({model})", "accuracies are meaningless"))
    elif svg is None and needs_svg:
        out.append(deviation("weights", "trained SVG residual encoder", "DINOv3 only (no --svg)"))
    return out


def run_deviations(st: dict, probe_report: dict) -> list[dict]:
    """Deviations that only show once the probe ran (batch clamped to the data, step count)."""
    cfg = probe_report["config"]
    out = []
    if cfg["batch_size_used"] != int(st["probe_batch_size"]):
        out.append(deviation("probe_batch_size_used", int(st["probe_batch_size"]), cfg["batch_size_used"],
                             "clamped to the number of training images"))
    return out


def _jsonable(o):
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


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
