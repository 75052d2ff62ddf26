"""Human-readable outputs of an evaluation: a Markdown table and an accuracy-per-learning-rate plot.

The plot is drawn with PIL only (matplotlib is not a dependency): log-scaled lr axis, one line per
series, a legend and the best point of each series marked.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _fmt(v, nd=2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _knn_line(knn: dict | None) -> str:
    if not knn:
        return "–"
    k20 = knn.get("k", {}).get("20")
    kb = knn.get("best")
    parts = [f"k=20 {_fmt(k20['top1'])}" if k20 else None, f"best {_fmt(kb['top1'])} (k={kb['k']})" if kb else None]
    return " · ".join(p for p in parts if p)


def markdown_report(results: dict) -> str:
    """Markdown summary of an ``eval imagenet`` results dict (see :mod:`svgfeat.evaluation.imagenet`)."""
    lines = [f"# svgfeat evaluation: {results.get('task', 'classification')}", ""]
    enc = results.get("encoder", {})
    tr, va = results.get("train", {}), results.get("val", {})
    ttf, vtf = tr.get("transform") or {}, va.get("transform") or results.get("transform") or {}
    if results.get("protocol"):
        lines += [f"**Protocol: `{results['protocol']}`** -- {results.get('protocol_summary', '')}", "",
                  f"- source: {results.get('protocol_source', '')}"]
    lines += [f"- data: train `{tr.get('data')}` ({tr.get('rows')} rows, {tr.get('views', 1)} view(s) per image, "
              f"transform {ttf.get('preset')} {ttf.get('size')} px), val `{va.get('data')}` ({va.get('rows')} rows, "
              f"transform {vtf.get('preset')} {vtf.get('size')} px)",
              f"- encoder: `{enc.get('model')}` (alignment {enc.get('alignment')})",
              f"- probe features: {results.get('normalize', '?')} -- {results.get('normalize_note', '')}",
              f"- selection: {results.get('note', results.get('selection'))}"]
    knn = results.get("knn")
    if knn:
        lines.append(f"- kNN: features `{knn.get('features')}`, T={knn.get('temperature')}, "
                     f"k={','.join(knn.get('k', {}))}, train neighbours through `{knn.get('train_transform')}`")
    devs = results.get("deviations")
    if devs is not None:
        lines += ["", "## Deviations from the protocol", ""]
        if not devs:
            lines.append("None.")
        for d in devs:
            note = f" ({d['note']})" if d.get("note") else ""
            lines.append(f"- `{d['setting']}`: protocol {d['protocol']!s}, used {d['used']!s}{note}")
        for x in results.get("inherent", []):
            lines.append(f"- inherent to a cached protocol: {x}")
    if results.get("unknown"):
        lines += ["", "## Not documented by the protocol's source (our reading)", ""]
        lines += [f"- {u}" for u in results["unknown"]]
    if results.get("reference_numbers"):
        lines += ["", "Published numbers: " + "; ".join(f"{k}: {v}" for k, v in results["reference_numbers"].items())]
    lines += ["", "## Summary (val accuracy, %)", "",
              "| features | dim | linear top-1 | linear top-5 | best head |", "|---|---:|---:|---:|---|"]
    for spec, r in results.get("features", {}).items():
        pb = r["probe"]["best"]
        lines.append(f"| `{spec}` | {r['probe']['config']['n_features']} | {_fmt(pb['top1'])} | {_fmt(pb['top5'])} | "
                     f"{pb['head']} |")
    if knn:
        lines.append(f"\nkNN on `{knn.get('features')}`: {_knn_line(knn)}")
    for spec, r in results.get("features", {}).items():
        lines += ["", f"## Linear probe heads: `{spec}`", "",
                  "| head | lr (scaled) | held-out top-1 | val top-1 | val top-5 |", "|---|---:|---:|---:|---:|"]
        best = r["probe"]["best"]["head"]
        for h in r["probe"]["heads"]:
            mark = " **←**" if h["name"] == best else ""
            lines.append(f"| {h['name']}{mark} | {h['lr']:.3g} | {_fmt(h.get('heldout_top1'))} | "
                         f"{_fmt(h.get('val_top1'))} | {_fmt(h.get('val_top5'))} |")
    if knn:
        lines += ["", f"## kNN (features `{knn.get('features')}`, T={knn['temperature']}, {knn['backend']})", "",
                  "| k | top-1 | top-5 |", "|---:|---:|---:|"]
        for k, v in knn["k"].items():
            lines.append(f"| {k} | {_fmt(v['top1'])} | {_fmt(v['top5'])} |")
    t = results.get("timings")
    if t:
        lines += ["", "## Timings (s)", "", " · ".join(f"{k} {v:.1f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def _font(size: int):
    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def plot_lr_curve(series: dict, path, title: str = "Linear probe: accuracy per learning rate",
                  ylabel: str = "top-1 accuracy (%)", size=(900, 560)) -> Path:
    """Draw accuracy-vs-lr lines to a PNG.

    series: {label: [(lr, accuracy_percent or None), ...]} (lr > 0). Returns the written path.
    """
    W, H = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    f, fs = _font(15), _font(12)
    left, right, top, bottom = 70, W - 200, 60, H - 60
    pts = [(lr, a) for s in series.values() for lr, a in s if a is not None and lr > 0]
    if not pts:
        d.text((W // 2 - 60, H // 2), "no data", fill="black", font=f)
        return _save_png(img, path)
    lx = [math.log10(lr) for lr, _ in pts]
    x0, x1 = math.floor(min(lx)), math.ceil(max(lx))
    if x1 == x0:
        x1 += 1
    ys = [a for _, a in pts]
    y0 = max(0.0, math.floor(min(ys) / 10) * 10)
    y1 = min(100.0, math.ceil(max(ys) / 10) * 10)
    if y1 <= y0:
        y1 = y0 + 10

    def px(lr, a):
        return (left + (math.log10(lr) - x0) / (x1 - x0) * (right - left),
                bottom - (a - y0) / (y1 - y0) * (bottom - top))

    # grid, ticks and labels
    for e in range(x0, x1 + 1):
        x = px(10.0 ** e, y0)[0]
        d.line([(x, top), (x, bottom)], fill=(225, 225, 225))
        d.text((x - 14, bottom + 6), f"1e{e}", fill="black", font=fs)
    step = 10 if y1 - y0 > 30 else 5 if y1 - y0 > 10 else 1
    y = y0
    while y <= y1 + 1e-9:
        yy = px(10.0 ** x0, y)[1]
        d.line([(left, yy), (right, yy)], fill=(225, 225, 225))
        d.text((left - 34, yy - 7), f"{y:g}", fill="black", font=fs)
        y += step
    d.rectangle([left, top, right, bottom], outline="black")
    d.text(((left + right - d.textlength(title, font=f)) // 2, 10), title, fill="black", font=f)
    d.text(((left + right) // 2 - 70, H - 28), "learning rate (scaled, log)", fill="black", font=fs)
    d.text((8, top - 22), ylabel, fill="black", font=fs)

    for i, (label, s) in enumerate(series.items()):
        col = PALETTE[i % len(PALETTE)]
        xy = [px(lr, a) for lr, a in sorted(s) if a is not None and lr > 0]
        if len(xy) > 1:
            d.line(xy, fill=col, width=2)
        for x, yv in xy:
            d.ellipse([x - 3, yv - 3, x + 3, yv + 3], fill=col)
        valid = [(lr, a) for lr, a in s if a is not None and lr > 0]
        if valid:
            bx, by = px(*max(valid, key=lambda t: t[1]))
            d.ellipse([bx - 6, by - 6, bx + 6, by + 6], outline=col, width=2)
        ly = top + 10 + 22 * i
        d.line([(right + 15, ly + 7), (right + 40, ly + 7)], fill=col, width=3)
        d.text((right + 46, ly), label, fill="black", font=fs)
    return _save_png(img, path)


def _save_png(img, path) -> Path:
    """The picture written whole or not at all, marked as svgfeat's (svgfeat.atomic)."""
    from ..atomic import atomic_file

    with atomic_file(path, durable=False) as f:
        img.save(f, format="PNG")
    return Path(path)
