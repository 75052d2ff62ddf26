"""Depth metrics: a hand-computed reference, an independent implementation, mmseg's DepthMetric, Eigen crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from svgfeat.errors import DataError
from svgfeat.heads.depth_metrics import (
    METRICS,
    DepthMetric,
    constant_baseline,
    depth_errors,
    eigen_crop_mask,
    mean_depth,
)


def test_hand_computed_reference():
    # valid pixels: gt 1, 1, 2 with predictions 1, 1.5, 4; gt 0 (no measurement) and 12 (> max) are ignored
    pred = np.array([[1.0, 1.5, 4.0, 7.0, 3.0]])
    gt = np.array([[1.0, 1.0, 2.0, 0.0, 12.0]])
    r = depth_errors(pred, gt, min_depth=1e-3, max_depth=10.0)
    ln2, ln15 = math.log(2), math.log(1.5)
    assert r["pixels"] == 3
    assert r["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 4) / 3), abs=1e-12)
    assert r["abs_rel"] == pytest.approx((0 + 0.5 + 1) / 3, abs=1e-12)
    assert r["sq_rel"] == pytest.approx((0 + 0.25 + 2) / 3, abs=1e-12)
    assert r["rmse_log"] == pytest.approx(math.sqrt((ln15 ** 2 + ln2 ** 2) / 3), abs=1e-12)
    assert r["log10"] == pytest.approx((math.log10(1.5) + math.log10(2)) / 3, abs=1e-12)
    mean_d2, mean_d = (ln15 ** 2 + ln2 ** 2) / 3, (ln15 + ln2) / 3
    assert r["silog"] == pytest.approx(100 * math.sqrt(mean_d2 - mean_d ** 2), abs=1e-10)
    # ratios 1, 1.5, 2: delta1 counts < 1.25, delta2 < 1.5625, delta3 < 1.953125
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    # a perfect prediction: zero errors, all deltas 1
    p = depth_errors(gt[:, :3], gt[:, :3])
    assert p["rmse"] == p["abs_rel"] == p["silog"] == p["log10"] == 0 and p["delta1"] == 1
    # silog is scale invariant (lambda = 1): a global scale of the prediction leaves it unchanged
    rng = np.random.default_rng(0)
    g = rng.uniform(0.5, 9, (20, 30))
    q = g * np.exp(rng.normal(0, 0.1, g.shape))
    assert depth_errors(3 * q, g)["silog"] == pytest.approx(depth_errors(q, g)["silog"], rel=1e-9)


def independent(pred: torch.Tensor, gt: torch.Tensor, lo: float, hi: float) -> dict:
    """A second implementation (torch, float64, masked_select, log-ratio / log10 identities)."""
    m = (gt > lo) & (gt < hi)
    p, g = torch.masked_select(pred, m), torch.masked_select(gt, m)
    n = p.numel()
    err = p - g
    lr = torch.log(p / g)
    thr = torch.where(p > g, p / g, g / p)
    silog_var = (lr * lr).sum() / n - (lr.sum() / n) ** 2
    return {"rmse": (err.pow(2).sum() / n).sqrt(), "abs_rel": (err.abs() / g).sum() / n,
            "sq_rel": (err.pow(2) / g).sum() / n, "rmse_log": (lr.pow(2).sum() / n).sqrt(),
            "log10": (lr.abs() / math.log(10)).sum() / n, "silog": 100 * silog_var.clamp_min(0).sqrt(),
            "delta1": (thr < 1.25).double().mean(), "delta2": (thr < 1.5625).double().mean(),
            "delta3": (thr < 1.953125).double().mean()}


def test_agrees_with_an_independent_implementation_on_random_arrays():
    rng = np.random.default_rng(1)
    metric = DepthMetric(1e-3, 10.0)
    per_image = []
    for _ in range(6):
        gt = rng.uniform(0.0, 12.0, (37, 53))
        gt[rng.random(gt.shape) < 0.1] = 0  # holes
        pred = np.clip(gt * np.exp(rng.normal(0, 0.3, gt.shape)) + rng.normal(0, 0.2, gt.shape), 0.05, None)
        ours = depth_errors(pred, gt)
        ref = independent(torch.as_tensor(pred), torch.as_tensor(gt), 1e-3, 10.0)
        for key in METRICS:
            assert ours[key] == pytest.approx(float(ref[key]), abs=1e-6), key
        per_image.append(ref)
        metric.update(pred, gt)
    agg = metric.compute()
    assert agg["images"] == 6
    for key in METRICS:  # dataset number = mean of per-image values
        assert agg[key] == pytest.approx(float(np.mean([float(r[key]) for r in per_image])), abs=1e-6)


def test_agrees_with_mmseg_depth_metric():
    from conftest import require_extra

    mm = require_extra("mmseg.evaluation.metrics.depth_metric", "mmseg")  # skip locally, fail under CI=true
    rng = np.random.default_rng(2)
    gt = rng.uniform(0.1, 9.9, (480, 640))
    pred = gt * np.exp(rng.normal(0, 0.2, gt.shape))
    theirs = mm.DepthMetric._calc_all_metrics(torch.as_tensor(gt[eigen_crop_mask(480, 640)]),
                                              torch.as_tensor(pred[eigen_crop_mask(480, 640)]))
    ours = depth_errors(pred, gt, crop="eigen")
    for a, b in (("rmse", "rmse"), ("abs_rel", "abs_rel"), ("sq_rel", "sq_rel"), ("rmse_log", "rmse_log"),
                 ("log10", "log10"), ("delta1", "d1"), ("delta2", "d2"), ("delta3", "d3")):
        assert ours[a] == pytest.approx(theirs[b], abs=1e-6), a
    # mmseg's silog uses lambda 0.5 and no x100: convert from the same d = ln p - ln g
    d = np.log(pred[eigen_crop_mask(480, 640)]) - np.log(gt[eigen_crop_mask(480, 640)])
    assert theirs["silog"] == pytest.approx(math.sqrt(np.mean(d ** 2) - 0.5 * np.mean(d) ** 2), abs=1e-6)


def test_eigen_crop_and_masks():
    m = eigen_crop_mask(480, 640)
    assert m.sum() == (471 - 45) * (601 - 41) and m[45, 41] and not m[44, 41] and not m[45, 601]
    gt = np.full((480, 640), 2.0)
    pred = gt.copy()
    pred[:45] = 9.0  # only outside the crop
    assert depth_errors(pred, gt, crop="eigen")["rmse"] == 0
    assert depth_errors(pred, gt)["rmse"] > 0
    assert eigen_crop_mask(240, 320).sum() == pytest.approx(m.sum() / 4, rel=0.02)


def test_errors_and_baselines():
    with pytest.raises(DataError, match="shape"):
        depth_errors(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(DataError, match="no valid"):
        depth_errors(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(DataError, match="> 0"):
        depth_errors(np.zeros((4, 4)), np.ones((4, 4)))
    with pytest.raises(DataError, match="crop"):
        depth_errors(np.ones((4, 4)), np.ones((4, 4)), crop="kitti")
    gts = [np.array([[1.0, 3.0], [0.0, 5.0]]), np.array([[3.0, 3.0], [3.0, 11.0]])]
    assert mean_depth(gts) == pytest.approx((1 + 3 + 5 + 3 + 3 + 3) / 6)
    b = constant_baseline(3.0, gts)
    assert b["images"] == 2 and b["value"] == 3.0
    assert b["rmse"] == pytest.approx((math.sqrt((4 + 0 + 4) / 3) + 0) / 2)
    assert DepthMetric().compute()["images"] == 0
