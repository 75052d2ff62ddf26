"""Monocular depth metrics as the literature defines them (Eigen et al. 2014; BTS / AdaBins / DINOv2 / mmseg).

For one image, over the valid pixels V = {gt > min_depth and gt < max_depth} (and inside the Eigen crop when
asked), with p = prediction, g = ground truth (metres), d = ln p - ln g:

    rmse     = sqrt(mean((p - g)^2))              abs_rel = mean(|p - g| / g)
    sq_rel   = mean((p - g)^2 / g)                 rmse_log = sqrt(mean(d^2))
    log10    = mean(|log10 p - log10 g|)           delta_i  = mean(max(p / g, g / p) < 1.25^i), i = 1, 2, 3
    silog    = 100 * sqrt(mean(d^2) - mean(d)^2)   (KITTI devkit / Monodepth / DINOv3 convention: lambda = 1,
                                                    x100; mmseg's DepthMetric uses lambda = 0.5 and no x100)

Dataset numbers are the mean of the per-image values (as BTS, AdaBins, the DINOv2 depth toolbox and mmseg's
``DepthMetric`` report them), not pooled over all pixels. Predictions are used as given (no clipping, no
median scaling): predictions on valid pixels must be > 0.

The Eigen crop (NYUv2 evaluation) keeps rows 45:471 and columns 41:601 of a 480 x 640 image; other image sizes
get the same box scaled proportionally.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ._dense_ops import as_numeric

METRICS = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")
LOWER_IS_BETTER = {"rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "silog"}
EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right on 480 x 640


def _as_float(x, what: str) -> np.ndarray:
    return as_numeric(x, what, "uif", np.float64, "be a numeric depth map")


def eigen_crop_mask(h: int, w: int) -> np.ndarray:
    """bool [h, w]: True inside the Eigen crop (exact on 480 x 640, scaled proportionally otherwise)."""
    top, bottom, left, right = EIGEN_CROP
    m = np.zeros((h, w), dtype=bool)
    m[round(top * h / 480):round(bottom * h / 480), round(left * w / 640):round(right * w / 640)] = True
    return m


def valid_mask(gt, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None) -> np.ndarray:
    """bool mask of the evaluated pixels: min_depth < gt < max_depth (and the Eigen crop when crop='eigen')."""
    g = _as_float(gt, "gt")
    m = (g > min_depth) & (g < max_depth)
    if crop == "eigen":
        m &= eigen_crop_mask(*g.shape[-2:])
    elif crop not in (None, "none"):
        raise DataError(f"crop={crop!r}: expected 'eigen' or None")
    return m


def depth_errors(pred, gt, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None) -> dict:
    """The metrics of one image (see the module doc): {name: float}, plus "pixels" (valid pixel count).

    ``pred`` and ``gt``: depth maps [H, W] in metres (numpy or torch). Raises DataError on a shape mismatch,
    on an image without valid pixels, or on a non-positive prediction at a valid pixel.
    """
    p, g = _as_float(pred, "pred"), _as_float(gt, "gt")
    if p.shape != g.shape:
        raise DataError(f"pred shape {p.shape} != gt shape {g.shape}; resize the prediction to the depth map")
    m = valid_mask(g, min_depth, max_depth, crop)
    n = int(m.sum())
    if n == 0:
        raise DataError(f"no valid ground-truth pixel ({min_depth} < gt < {max_depth}) in this image")
    p, g = p[m], g[m]
    if not (p > 0).all() or not np.isfinite(p).all():
        raise DataError("predicted depth must be finite and > 0 on every valid pixel")
    diff = p - g
    d = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff ** 2 / g)),
        "rmse_log": float(np.sqrt(np.mean(d ** 2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "silog": float(100.0 * np.sqrt(max(np.mean(d ** 2) - np.mean(d) ** 2, 0.0))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25 ** 2)),
        "delta3": float(np.mean(ratio < 1.25 ** 3)),
        "pixels": n,
    }


class DepthMetric:
    """Streaming per-image depth metrics; :meth:`compute` averages them over images.

    Parameters: ``min_depth`` / ``max_depth`` (valid ground truth, default 0.001 / 10 m, DINOv3's NYUv2
    setting); ``crop`` ("eigen" or None).
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, crop: str | None = None):
        if not 0 <= min_depth < max_depth:
            raise DataError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth, self.crop = float(min_depth), float(max_depth), crop
        self.rows: list[dict] = []

    def reset(self) -> "DepthMetric":
        self.rows = []
        return self

    def update(self, pred, gt) -> "DepthMetric":
        """pred, gt: one depth map [H, W] or a batch [B, H, W]. Images without valid pixels are skipped."""
        p, g = _as_float(pred, "pred"), _as_float(gt, "gt")
        if p.ndim == 2:
            p, g = p[None], g[None]
        if p.shape != g.shape:
            raise DataError(f"pred shape {p.shape} != gt shape {g.shape}")
        for pi, gi in zip(p, g):
            if valid_mask(gi, self.min_depth, self.max_depth, self.crop).any():
                self.rows.append(depth_errors(pi, gi, self.min_depth, self.max_depth, self.crop))
        return self

    def compute(self) -> dict:
        """{metric: mean over images} for every name in METRICS, plus "images" and "pixels" (totals)."""
        if not self.rows:
            return {**{k: float("nan") for k in METRICS}, "images": 0, "pixels": 0}
        out = {k: float(np.mean([r[k] for r in self.rows])) for k in METRICS}
        return {**out, "images": len(self.rows), "pixels": int(sum(r["pixels"] for r in self.rows))}


def constant_baseline(value: float, gts, min_depth: float = 1e-3, max_depth: float = 10.0,
                      crop: str | None = None) -> dict:
    """Metrics of predicting the constant ``value`` (e.g. the mean training depth) everywhere on ``gts``."""
    m = DepthMetric(min_depth, max_depth, crop)
    for g in gts:
        g = _as_float(g, "gt")
        m.update(np.full_like(g, float(value)), g)
    return {**m.compute(), "value": float(value)}


def mean_depth(depths, min_depth: float = 1e-3, max_depth: float = 10.0) -> float:
    """Mean of the valid pixels (min_depth < d < max_depth) over depth maps."""
    s, n = 0.0, 0
    for d in depths:
        d = _as_float(d, "depth")
        v = d[(d > min_depth) & (d < max_depth)]
        s, n = s + float(v.sum()), n + v.size
    if n == 0:
        raise DataError("no valid depth pixel to average")
    return s / n
