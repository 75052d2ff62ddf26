"""Semantic-segmentation metrics from a confusion matrix: mIoU, mAcc, aAcc (mmseg ``IoUMetric`` definitions).

For K classes the accumulator keeps an int64 confusion matrix ``cm[gt, pred]`` of shape [K, K] over every
pixel whose ground truth is not ``ignore_index``. From it, per class c:
    intersect = cm[c, c]; area_label = cm[c, :].sum(); area_pred = cm[:, c].sum()
    IoU_c = intersect / (area_label + area_pred - intersect);   Acc_c = intersect / area_label
    mIoU = nanmean(IoU), mAcc = nanmean(Acc) (classes absent from both gt and prediction give NaN and are
    skipped, exactly as mmseg does); aAcc = trace(cm) / cm.sum().
Values are fractions in [0, 1]; mmseg reports ``round(100 * value, 2)`` (see :meth:`SegMetric.compute`).

``reduce_zero_label`` (ADE20K): raw label 0 ("other") becomes ``ignore_index`` and every other label is
shifted down by one, as mmseg's ``LoadAnnotations(reduce_zero_label=True)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ._dense_ops import as_numeric


def reduce_zero_label(mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Raw ADE20K label map (uint8/int, 0 = other) -> training labels: 0 -> ignore, k -> k - 1.

    Returns an int64 array of the same shape; ``ignore_index`` pixels stay ``ignore_index``.
    """
    m = np.asarray(mask).astype(np.int64)
    out = m - 1
    out[m == 0] = ignore_index
    out[m == ignore_index] = ignore_index
    return out


def _as_int_array(x, what: str) -> np.ndarray:
    return as_numeric(x, what, "iub", np.int64, "hold integer labels")


class SegMetric:
    """Streaming confusion-matrix accumulator for K-class semantic segmentation.

    Parameters: ``num_classes`` K; ``ignore_index`` (default 255) ground-truth value that is skipped;
    ``reduce_zero_label`` applies the ADE20K label reduction to the *ground truth* passed to :meth:`update`
    (predictions are always in 0..K-1).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, reduce_zero_label: bool = False,
                 class_names=None):
        if int(num_classes) < 1:
            raise DataError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> "SegMetric":
        self.confusion[:] = 0
        return self

    def update(self, pred, gt) -> "SegMetric":
        """pred, gt: integer label maps of equal shape ([H, W] or [B, H, W]; numpy or torch).

        ``pred`` values must lie in 0..K-1; ``gt`` values in 0..K-1 or ``ignore_index`` (after the
        optional zero-label reduction).
        """
        p = _as_int_array(pred, "pred")
        g = _as_int_array(gt, "gt")
        if p.shape != g.shape:
            raise DataError(f"pred shape {p.shape} != gt shape {g.shape}; resize the prediction to the mask size")
        if self.reduce_zero_label:
            g = reduce_zero_label(g, self.ignore_index)
        valid = g != self.ignore_index
        p, g = p[valid], g[valid]
        K = self.num_classes
        if g.size and (g.min() < 0 or g.max() >= K):
            bad = sorted(set(np.unique(g[(g < 0) | (g >= K)]).tolist()))[:5]
            raise DataError(f"ground-truth labels {bad} are outside 0..{K - 1} and are not ignore_index "
                            f"{self.ignore_index}")
        if p.size and (p.min() < 0 or p.max() >= K):
            raise DataError(f"predicted labels must lie in 0..{K - 1}, got range {p.min()}..{p.max()}")
        self.confusion += np.bincount(g * K + p, minlength=K * K).reshape(K, K)
        return self

    def merge(self, other: "SegMetric") -> "SegMetric":
        if other.num_classes != self.num_classes:
            raise DataError(f"cannot merge metrics with {other.num_classes} and {self.num_classes} classes")
        self.confusion += other.confusion
        return self

    # ------------------------------------------------------------------ results
    def areas(self) -> dict:
        """Per-class int64 areas [K]: intersect, union, pred_label, label (mmseg's four totals)."""
        cm = self.confusion
        inter = np.diag(cm).copy()
        label = cm.sum(axis=1)
        pred = cm.sum(axis=0)
        return {"intersect": inter, "union": label + pred - inter, "pred_label": pred, "label": label}

    def per_class(self) -> dict:
        """{"IoU": float64 [K], "Acc": float64 [K]} with NaN for classes whose denominator is 0."""
        a = self.areas()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = a["intersect"] / a["union"].astype(np.float64)
            acc = a["intersect"] / a["label"].astype(np.float64)
        return {"IoU": iou, "Acc": acc}

    def compute(self) -> dict:
        """{"mIoU", "mAcc", "aAcc"} as fractions in [0, 1] (NaN if nothing was counted), plus per-class
        "IoU" / "Acc" lists (None for NaN) and the pixel count "pixels"."""
        pc = self.per_class()
        total = int(self.confusion.sum())
        with np.errstate(invalid="ignore"):
            miou = float(np.nanmean(pc["IoU"])) if np.isfinite(pc["IoU"]).any() else float("nan")
            macc = float(np.nanmean(pc["Acc"])) if np.isfinite(pc["Acc"]).any() else float("nan")
        aacc = float(np.trace(self.confusion) / total) if total else float("nan")
        return {"mIoU": miou, "mAcc": macc, "aAcc": aacc, "pixels": total,
                "IoU": [None if not np.isfinite(v) else float(v) for v in pc["IoU"]],
                "Acc": [None if not np.isfinite(v) else float(v) for v in pc["Acc"]]}

    def summary(self) -> dict:
        """mmseg's reported numbers: percentages rounded to 2 decimals ({"mIoU", "mAcc", "aAcc"})."""
        r = self.compute()
        return {k: float(np.round(r[k] * 100, 2)) for k in ("aAcc", "mIoU", "mAcc")}


def majority_baseline(gt_masks, num_classes: int, ignore_index: int = 255) -> dict:
    """Metrics of predicting the most frequent ground-truth class everywhere (the trivial baseline).

    ``gt_masks``: iterable of integer label maps (already in training-label space). Returns compute()'s dict
    plus "class" (the majority class index).
    """
    masks = list(gt_masks)
    counts = np.zeros(num_classes, dtype=np.int64)
    for g in masks:
        g = _as_int_array(g, "gt")
        g = g[g != ignore_index]
        counts += np.bincount(g.ravel(), minlength=num_classes)[:num_classes]
    cls = int(counts.argmax())
    m = SegMetric(num_classes, ignore_index)
    for g in masks:
        g = _as_int_array(g, "gt")
        m.update(np.full_like(g, cls), g)
    return {**m.compute(), "class": cls}
