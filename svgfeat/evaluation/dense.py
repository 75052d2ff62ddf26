"""The runs behind ``svgfeat seg|depth train|eval|predict``: protocol presets, torchrun, caches, evaluation and
pictures. ``task`` is "seg" (:class:`~svgfeat.heads.segmentation.LinearSegHead`, ADE20K protocol) or "depth"
(:class:`~svgfeat.heads.depth.LinearDepthHead`, NYUv2 protocol); the presets live in
:mod:`svgfeat.evaluation.protocols` (:func:`~svgfeat.evaluation.protocols.dense_protocol`).

Under ``torchrun`` :func:`train_dense` joins the process group, every rank trains on its share of each global
batch (the head runs data parallel by itself), rank 0 alone saves, evaluates and writes; the others wait.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import ConfigError
from ..outputs import check_outputs, write_output
from .protocols import dense_protocol

TRAIN_FILES = ("head.safetensors", "head.json", "metrics.json")  # what train_dense writes into OUT
PREDICT_SUFFIXES = {"seg": ("_labels", "_mask", "_overlay"), "depth": ("_depth", "_side", "_depth_mm")}
DEPTH_KEYS = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")


def _head_class(task: str):
    if task == "seg":
        from ..heads.segmentation import LinearSegHead

        return LinearSegHead
    from ..heads.depth import LinearDepthHead

    return LinearDepthHead


def open_split(task: str, data, split: str, depth_scale=None, split_file=None, limit=None):
    """The dataset of ``split`` (``sample:NAME[/x]`` -> ``sample:NAME/split``), cut to the first ``limit`` items."""
    sample = str(data).startswith("sample:")
    if task == "seg":
        from ..data.segmentation import open_seg_dataset

        ds = open_seg_dataset(f"{str(data).split('/')[0]}/{split}") if sample else open_seg_dataset(data, split=split)
    else:
        from ..data.depth import open_depth_dataset

        ds = (open_depth_dataset(f"{str(data).split('/')[0]}/{'val' if split == 'test' else split}") if sample
              else open_depth_dataset(data, split=split, depth_scale=depth_scale, split_file=split_file))
    return ds.subset(range(min(int(limit), len(ds)))) if limit else ds


def head_settings(task: str, data, **overrides) -> tuple[dict, dict]:
    """(head parameters, run settings) from the task's preset for ``data`` and the non-None ``overrides``."""
    s = {**dense_protocol(task, data).settings, **{k: v for k, v in overrides.items() if v is not None}}
    if task == "depth" and overrides.get("crop_size") is not None:  # one window per crop, half-crop stride
        c = overrides["crop_size"]
        s.setdefault("slide_crop", c) if overrides.get("slide_crop") else s.update(slide_crop=c)
        s["slide_stride"] = overrides.get("slide_stride") or (max(1, c[0] // 2), max(1, c[1] // 2))
    if task == "depth" and s.get("grad_clip") == 0:
        s["grad_clip"] = None
    run = {k: s.pop(k) for k in ("task", "cache_size") if k in s}
    return s, run


def format_metrics(task: str, r: dict) -> str:
    if task == "seg":
        return f"mIoU {100 * r['mIoU']:.2f}  mAcc {100 * r['mAcc']:.2f}  aAcc {100 * r['aAcc']:.2f}"
    return (f"RMSE {r['rmse']:.4f}  AbsRel {r['abs_rel']:.4f}  log10 {r['log10']:.4f}  SILog {r['silog']:.2f}  "
            f"d1 {r['delta1']:.4f}  d2 {r['delta2']:.4f}  d3 {r['delta3']:.4f}")


def write_png(path, array: np.ndarray, mode=None, meta: dict | None = None) -> Path:
    """Write a uint8 / uint16 / int32 picture as PNG (``meta`` recorded in it), whole or not at all."""
    from PIL import Image

    from ..picture_files import encode_image

    return write_bytes_atomic(path, encode_image(Image.fromarray(array, mode), ".png", meta), durable=False)


# ------------------------------------------------------------------------------------------------- train
def train_dense(task: str, data, out, make_encoder, *, device="cpu", split="train", val_split="val",
                cached=False, cache_dir=None, cache_size=None, eval_limit=None, evaluate=True, depth_scale=None,
                split_file=None, val_split_file=None, log=print, overwrite=False, **overrides) -> dict | None:
    """Train a head of ``task`` on ``data`` (preset + ``overrides``: head parameters, None = the preset's) and
    write OUT/head.safetensors (+ .json) and OUT/metrics.json; returns the metrics (None on ranks other than 0).
    ``make_encoder(device)`` builds the encoder on this rank's device. Those files are checked before any
    work: one svgfeat did not write is refused unless ``overwrite``."""
    from .. import distributed as D

    check_outputs([Path(out) / n for n in TRAIN_FILES], overwrite)
    info, dev = D.setup(device)  # torchrun: rank r on cuda:LOCAL_RANK
    try:
        params, run = head_settings(task, data, **overrides)
        out = Path(out)
        enc = make_encoder(str(dev))
        ds = open_split(task, data, split, depth_scale, split_file)
        head = _head_class(task)(enc, device=str(dev), verbose=info.is_main, **params)
        if int(head.batch_size) % info.world:
            raise ConfigError(f"--batch-size {head.batch_size} is not divisible by the {info.world} torchrun ranks")
        say = log if info.is_main else (lambda *_: None)
        if cached:  # every rank joins the extraction (it shards the work over the ranks)
            root = Path(cache_dir) if cache_dir else out / "cache" / split
            cache = _extract_for(task, ds, enc, root, cache_size or run.get("cache_size"), head, str(dev), say)
            say(f"training from cache {cache.root} ({len(cache)} rows)")
            head.fit(cache, ds)
        else:
            say(f"training online on {len(ds)} images of {ds.spec}")
            head.fit(ds)
        metrics = None
        if info.is_main:  # rank 0 saves and evaluates
            out.mkdir(parents=True, exist_ok=True)
            log(f"wrote {head.save(out / 'head.safetensors')}")
            metrics = _train_metrics(task, head, data, split, overrides.get("group") or head.group)
            metrics["numerics"] = head._numerics().record()  # how the encoder and head forward passes ran
            if evaluate:
                _evaluate_after_training(task, head, data, val_split, depth_scale, val_split_file, eval_limit,
                                         metrics, log)
            write_output(out / "metrics.json", json.dumps(metrics, indent=2))
        D.barrier(info)  # the others wait until rank 0 has written
        return metrics
    finally:
        D.teardown(info)


def _train_metrics(task, head, data, split, group) -> dict:
    m = {"data": str(data), "split": split, "iters": head.n_iter_, "mode": head.mode_}
    if task == "depth":
        m["group"] = group
    m["final_loss"] = head.history_[-1] if head.history_ else None
    if task == "depth":
        m["train_depth_mean"] = head.train_depth_mean_
    return {"train": m}


def _evaluate_after_training(task, head, data, val_split, depth_scale, split_file, limit, metrics, log) -> None:
    if task == "seg":
        try:
            val = open_split(task, data, val_split, limit=limit)
        except Exception as e:  # no validation split: report and keep the trained head
            log(f"no evaluation ({e})")
            return
        r = head.evaluate(val, progress_bar=True)
        log(f"{val.spec} ({len(val)} images): {format_metrics(task, r)}")
        metrics["val"] = {k: r[k] for k in ("mIoU", "mAcc", "aAcc", "IoU", "Acc", "classes")}
        return
    val = open_split(task, data, val_split, depth_scale, split_file, limit)
    r, base = head.evaluate(val, progress_bar=True), depth_baseline(head, val)
    _log_depth(val, r, base, log)
    metrics.update({k: r[k] for k in DEPTH_KEYS})
    metrics["baseline_rmse"] = base["rmse"]
    metrics["val"] = {"data": val.spec, "images": r["images"], "eval_crop": r["eval_crop"], "tta": r["tta"],
                      **{k: r[k] for k in DEPTH_KEYS}}
    metrics["baseline"] = {"value": base["value"], **{k: base[k] for k in DEPTH_KEYS}}


def _log_depth(ds, r, base, log) -> None:
    log(f"{ds.spec} ({r['images']} images, crop {r['eval_crop']}, tta {r['tta']}): {format_metrics('depth', r)}")
    if base:
        log(f"mean-depth baseline ({base['value']:.3f} m everywhere): {format_metrics('depth', base)}")
    for f in r.get("failures", []):
        log(f"left out {f['item']}: {f['error']}")


def depth_baseline(head, ds) -> dict:
    """The constant (mean training depth) baseline of a depth head on ``ds``, on the head's evaluation crop."""
    from ..heads.depth_metrics import constant_baseline

    return constant_baseline(head.train_depth_mean_, (ds.load_depth(i) for i in range(len(ds))),
                             float(head.min_depth), float(head.max_depth), head.eval_crop_for(ds))


def _extract_for(task, ds, enc, cache_dir: Path, size, head, device, log):
    """Dense-feature cache of ``ds``. Segmentation: native size when every image is the same square multiple of
    16, else resized to the crop; depth: every image resized to ``size`` (preset 'resize')."""
    from ..extraction import extract

    preset = "resize"
    if task == "seg":
        sizes = {_image_size(ds, i) for i in range(len(ds))}
        w, h = next(iter(sizes))
        native = len(sizes) == 1 and w == h and w % 16 == 0
        preset, size = ("none", w) if native else ("resize", int(head.crop_size))
    elif int(size) % 16:
        raise ConfigError(f"--cache-size must be a multiple of 16, got {size}")
    log(f"extracting dense features ({preset} {size}px) to {cache_dir}")
    return extract(ds, cache_dir, encoder=enc, groups=("dino", "latent"), size=int(size), preset=preset,
                   device=device, alignment=enc.alignment or "batch", progress=True)


def _image_size(ds, i):
    from PIL import Image

    if str(ds.root).startswith("sample:"):
        return ds.load(i).size
    with Image.open(ds.abspath(i)) as im:  # header only
        return im.size


# ------------------------------------------------------------------------------------------------- eval / predict
def load_head(task: str, path, encoder, device="cpu", warn=print):
    """A saved head with its encoder; warns when the encoder differs from the one it was trained with."""
    from ..extraction import encoder_spec

    head = _head_class(task).load(path, encoder=encoder, device=device)
    want, have = head.encoder_spec_ or {}, encoder_spec(encoder)
    diffs = [k for k in ("model", "dinov3_sha256", "svg_sha256") if want.get(k) != have.get(k)]
    if diffs:
        warn(f"warning: the head was trained with a different encoder ({', '.join(diffs)} differ: "
             f"{ {k: want.get(k) for k in diffs} } vs { {k: have.get(k) for k in diffs} })")
    return head


def evaluate_dense(task: str, data, head_path, encoder, *, device="cpu", split="val", limit=None,
                   depth_scale=None, split_file=None, per_class=False, json_out=None, log=print, warn=print,
                   overwrite=False, precision=None, **overrides) -> dict:
    """Evaluate a saved head on ``split`` of ``data`` (``overrides``: head parameters such as inference,
    slide_crop, eval_crop, tta; None = the head's), print the metrics and a baseline, optionally write JSON
    (an existing ``json_out`` svgfeat did not write is refused before any work unless ``overwrite``).
    ``precision``: the numerics of the forward passes (None: the head's; recorded under "numerics")."""
    if json_out:
        check_outputs([json_out], overwrite)
    head = load_head(task, head_path, encoder, device, warn)
    head.set_params(**{k: v for k, v in dict(overrides, precision=precision).items() if v is not None})
    numerics = head._numerics().record()  # refused here (one line) when the device cannot run it
    ds = open_split(task, data, split, depth_scale, split_file, limit)
    if task == "seg" and ds.num_classes != head.num_classes_:
        raise ConfigError(f"the dataset has {ds.num_classes} classes but the head predicts {head.num_classes_}")
    r = head.evaluate(ds, progress_bar=True)
    if task == "seg":
        from ..heads.seg_metrics import majority_baseline

        base = majority_baseline((ds.load_mask(i) for i in range(len(ds))), ds.num_classes, ds.ignore_index)
        log(f"{ds.spec} ({len(ds)} images): {format_metrics(task, r)}")
        log(f"majority-class baseline (class {base['class']}): {format_metrics(task, base)}")
        for name, iou, acc in zip(r["classes"], r["IoU"], r["Acc"]) if per_class else ():
            log(f"  {name:<24} IoU {_pct(iou)}  Acc {_pct(acc)}")
    else:
        base = depth_baseline(head, ds) if head.train_depth_mean_ is not None else None
        _log_depth(ds, r, base, log)
    result = {"metrics": r, "baseline": base, "data": str(data), "split": split, "numerics": numerics}
    if json_out:
        write_output(json_out, json.dumps(result, indent=2))
    return result


def _pct(v) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}"


def predict_dense(task: str, images, head_path, encoder, out, *, device="cpu", alpha=0.5, max_display_depth=None,
                  tta=True, log=print, warn=print, precision=None, overwrite=False) -> list[Path]:
    """Predict IMAGES (paths, or one ``sample:...`` spec) and write pictures to ``out``. Segmentation:
    <stem>_labels.png (class indices), _mask.png (palette colours), _overlay.png; depth: <stem>_depth.png
    (colour map), _side.png (image | depth) and _depth_mm.png (uint16 millimetres). Every one of them is checked
    before any work: a file svgfeat did not write is refused unless ``overwrite``. ``precision``: the numerics of
    the forward passes (None: the head's)."""
    from ..data.segmentation import color_palette, to_pil
    from ..visualize import colorize_depth, overlay, side_by_side

    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
    sample = len(images) == 1 and str(images[0]).startswith("sample:")
    ds = open_split(task, images[0], str(images[0]).partition("/")[2] or "val") if sample else None
    stems = [Path(p).name for p in ds.paths] if sample else [Path(p).stem for p in images]
    out = Path(out)
    check_outputs([out / f"{s}{x}.png" for s in stems for x in PREDICT_SUFFIXES[task]], overwrite)
    head = load_head(task, head_path, encoder, device, warn)
    if precision is not None:
        head.set_params(precision=precision)
    meta = {"made_by": f"svgfeat {task} predict", "head": str(head_path),  # recorded in every PNG
            "numerics": head._numerics().record()}  # a precision the device cannot run: one line, nothing written
    items = [(ds.load(i) if sample else to_pil(images[i]), stem) for i, stem in enumerate(stems)]
    written = []
    for img, stem in items:
        if task == "seg":
            labels = head.predict([img])[0]
            colour = color_palette(max(head.num_classes_, 1))[labels]
            wide = head.num_classes_ > 256
            written += [write_png(out / f"{stem}_labels.png", labels.astype(np.int32 if wide else np.uint8),
                                  "I" if wide else "L", meta),
                        write_png(out / f"{stem}_mask.png", colour, meta=meta),
                        write_png(out / f"{stem}_overlay.png", overlay(img, colour, alpha), meta=meta)]
            present = [head.classes_[c] for c in np.unique(labels)]
            log(f"{stem}: {', '.join(present[:8])}{' ...' if len(present) > 8 else ''}")
        else:
            d = head.image_depth(img, tta=tta)
            colour = colorize_depth(d, 0.0, float(max_display_depth or head.max_depth))
            written += [write_png(out / f"{stem}_depth.png", colour, meta=meta),
                        write_png(out / f"{stem}_side.png", side_by_side(np.asarray(img), colour), meta=meta),
                        write_png(out / f"{stem}_depth_mm.png",
                                  np.clip(np.round(d * 1000), 0, 65535).astype(np.uint16), meta=meta)]
            log(f"{stem}: depth {d.min():.2f}-{d.max():.2f} m (median {np.median(d):.2f})")
    log(f"wrote {len(written)} PNG file(s) to {out}")
    return written
