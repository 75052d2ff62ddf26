"""Confusion-matrix segmentation metrics (mIoU / mAcc / aAcc) and their agreement with mmseg's IoUMetric."""

from __future__ import annotations

import numpy as np
import pytest

from svgfeat.errors import DataError
from svgfeat.heads.seg_metrics import SegMetric, majority_baseline, reduce_zero_label


def test_hand_computed_example():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 2]])
    r = SegMetric(3).update(pred, gt).compute()
    # class 0: I=1, label=2, pred=1 -> IoU 1/2, Acc 1/2; class 1: I=2, label=2, pred=4 -> IoU 2/4, Acc 1;
    # class 2: I=0, label=1, pred=0 (the pixel predicted 2 has gt 255: ignored) -> IoU 0, Acc 0
    assert r["IoU"] == pytest.approx([1 / 2, 1 / 2, 0.0])
    assert r["Acc"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert r["mIoU"] == pytest.approx(1 / 3)
    assert r["aAcc"] == pytest.approx(3 / 5)
    assert r["pixels"] == 5


def test_absent_classes_are_nan_and_skipped():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    m = SegMetric(4).update(pred, gt)
    r = m.compute()
    assert r["IoU"][2] is None and r["IoU"][3] is None  # absent from gt and prediction
    assert r["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m.summary() == {"aAcc": 75.0, "mIoU": 58.33, "mAcc": 75.0}


def test_reduce_zero_label_and_ignore():
    raw = np.array([[0, 1, 2], [150, 255, 3]], dtype=np.uint8)
    red = reduce_zero_label(raw)
    assert red.tolist() == [[255, 0, 1], [149, 255, 2]]
    pred = np.array([[7, 0, 1], [149, 5, 2]])
    a = SegMetric(150, reduce_zero_label=True).update(pred, raw).compute()
    b = SegMetric(150).update(pred, red).compute()
    assert a["aAcc"] == b["aAcc"] == 1.0 and a["pixels"] == 4


def test_batched_merge_and_torch_inputs():
    import torch

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 16, 16))
    gt[:, :2] = 255
    pred = rng.integers(0, 5, (3, 16, 16))
    whole = SegMetric(5).update(pred, gt)
    parts = SegMetric(5)
    for i in range(3):
        parts.merge(SegMetric(5).update(torch.as_tensor(pred[i]), torch.as_tensor(gt[i])))
    np.testing.assert_array_equal(whole.confusion, parts.confusion)
    assert whole.confusion.sum() == 3 * 14 * 16


def test_invalid_inputs_raise():
    m = SegMetric(3)
    with pytest.raises(DataError, match="shape"):
        m.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(DataError, match="outside 0..2"):
        m.update(np.zeros(3, int), np.array([0, 1, 7]))
    with pytest.raises(DataError, match="predicted labels"):
        m.update(np.array([0, 3, 0]), np.zeros(3, int))
    with pytest.raises(DataError, match="integer"):
        m.update(np.zeros(3), np.zeros(3, int))


def test_majority_baseline():
    masks = [np.array([[0, 0, 1]]), np.array([[0, 2, 255]])]
    b = majority_baseline(masks, 3)
    assert b["class"] == 0
    assert b["aAcc"] == pytest.approx(3 / 5)
    assert b["mIoU"] == pytest.approx((3 / 5) / 3)


def test_agrees_exactly_with_mmseg_iou_metric():
    from conftest import require_extra

    require_extra("mmseg")  # skipped without the [mmseg] extra; FAILS under CI=true
    import torch
    from mmseg.evaluation import IoUMetric

    K = 6
    rng = np.random.default_rng(1)
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(K)]}
    ours = SegMetric(K)
    for i in range(5):
        h, w = 24 + 4 * i, 40 - 2 * i
        gt = rng.integers(0, K - 1, (h, w))  # class K-1 never in the ground truth
        gt[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, K, (h, w)))
        sample = {"pred_sem_seg": {"data": torch.as_tensor(pred)[None]},
                  "gt_sem_seg": {"data": torch.as_tensor(gt)[None]}}
        metric.process({}, [sample])
        ours.update(pred, gt)
    # the four area totals are identical integers
    totals = [sum(r[j] for r in metric.results).numpy() for j in range(4)]
    a = ours.areas()
    for t, key in zip(totals, ("intersect", "union", "pred_label", "label")):
        np.testing.assert_array_equal(t.astype(np.int64), a[key])
    theirs = metric.compute_metrics(metric.results)
    # mmseg reports float32 values (np.round of float32 means): equal at that precision
    assert {k: np.float32(v) for k, v in ours.summary().items()} == {k: theirs[k] for k in ("aAcc", "mIoU", "mAcc")}
    print("mmseg", dict(theirs), "ours", ours.summary())
