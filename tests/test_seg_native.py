"""Native linear segmentation head, segmentation datasets (digitseg sample, folders, ADE20K), augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from svgfeat.data.segmentation import (
    DIGITSEG_CLASSES,
    SegTrainAugment,
    open_seg_dataset,
    transform_mask,
    write_folder_dataset,
)
from svgfeat.errors import ConfigError, DataError
from svgfeat.heads.seg_metrics import majority_baseline
from svgfeat.heads.segmentation import LinearSegHead, slide_inference

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


@pytest.fixture(scope="module")
def digitseg():
    return open_seg_dataset("sample:digitseg/train"), open_seg_dataset("sample:digitseg/val")


@pytest.fixture(scope="module")
def val_small(digitseg):
    return digitseg[1].subset(range(60))


def baseline(ds):
    return majority_baseline([ds.load_mask(i) for i in range(len(ds))], ds.num_classes)


# ------------------------------------------------------------------------------ datasets
def test_digitseg_sample_is_real_deterministic_and_split(digitseg):
    tr, va = digitseg
    assert (len(tr), len(va)) == (1400, 397) and tr.classes == list(DIGITSEG_CLASSES) and tr.num_classes == 11
    img, mask = tr.load_pair(0)
    assert img.size == (64, 64) and img.mode == "RGB" and mask.shape == (64, 64) and mask.dtype == np.int64
    again = open_seg_dataset("sample:digitseg", split="train")
    np.testing.assert_array_equal(np.asarray(again.load(5)), np.asarray(tr.load(5)))
    masks = np.stack([tr.load_mask(i) for i in range(200)])
    labels = set(np.unique(masks).tolist())
    assert labels <= set(range(11)) and len(labels) == 11  # background + all ten digits
    assert 0.05 < (masks > 0).mean() < 0.5
    # every image has exactly one digit class on a real-photo background
    assert all(len(set(np.unique(m).tolist()) - {0}) == 1 for m in masks)
    assert np.asarray(tr.load(0)).std() > 20 and tr.abspath(0).startswith("sample:digitseg/train/")


def test_folder_and_ade20k_layouts_roundtrip(tmp_path, digitseg):
    ds = digitseg[1].subset(range(5))
    write_folder_dataset(ds, tmp_path / "folder")
    f = open_seg_dataset(tmp_path / "folder")
    assert len(f) == 5 and f.classes == ds.classes and not f.reduce_zero_label
    write_folder_dataset(ds, tmp_path / "ade", layout="ade20k", split="val")
    a = open_seg_dataset(str(tmp_path / "ade"), split="val")
    assert a.reduce_zero_label and a.num_classes == 150
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(f.load(i)), np.asarray(ds.load(i)))
        np.testing.assert_array_equal(f.load_mask(i), ds.load_mask(i))
        np.testing.assert_array_equal(a.load_mask(i), ds.load_mask(i))  # raw k+1 -> k after reduce_zero_label
    (tmp_path / "folder" / "masks" / f"{f.paths[0].split('/')[-1].rsplit('.', 1)[0]}.png").unlink()
    with pytest.raises(DataError, match="no mask with the same stem"):
        open_seg_dataset(tmp_path / "folder")
    with pytest.raises(DataError, match="neither an ADE20K root"):
        open_seg_dataset(tmp_path / "ade" / "images")
    with pytest.raises(DataError, match="unknown segmentation sample"):
        open_seg_dataset("sample:nope")


def test_train_augmentation_keeps_image_and_mask_aligned():
    # a 2-class picture whose colour *is* the label: red left half (1), blue right half (0)
    img = np.zeros((48, 80, 3), np.uint8)
    img[:, :40, 0] = 255
    img[:, 40:, 2] = 255
    mask = np.zeros((48, 80), np.int64)
    mask[:, :40] = 1
    from PIL import Image

    aug = SegTrainAugment(crop=64, base=48, scale_range=(0.5, 2.0), cat_max_ratio=1.0)
    saw_pad = saw_flip = False
    for seed in range(20):
        x, m = aug(Image.fromarray(img), mask, np.random.default_rng(seed))
        assert x.shape == (3, 64, 64) and m.shape == (64, 64)
        valid = m != 255
        saw_pad |= bool((~valid).any())
        red = (x[0] > x[2]).numpy()
        agree = (red == (m == 1))[valid & ((x[0] - x[2]).abs().numpy() > 1)]
        assert agree.mean() > 0.97
        saw_flip |= bool(valid[:, 0].any() and m[valid[:, 0], 0].min() == 0)
    assert saw_pad and saw_flip


@pytest.mark.parametrize("preset", ["resize", "svg", "center-crop"])
def test_transform_mask_follows_the_image_transform(preset):
    from PIL import Image

    from svgfeat.data.transforms import Transform

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 4, (6, 9))
    mask = np.kron(blocks, np.ones((16, 16), np.int64))  # 96 x 144
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    t = Transform(preset, 64)
    img = np.asarray(t.to_pil(Image.fromarray(colours[mask])))
    m = transform_mask(mask, t.spec())
    assert m.shape == (64, 64)
    dist = ((img[:, :, None, :].astype(int) - colours[None, None].astype(int)) ** 2).sum(-1)
    assert (dist.argmin(-1) == m).mean() > 0.9


# ------------------------------------------------------------------------------ the head
def test_online_head_beats_majority_baseline(tiny, digitseg, val_small):
    head = LinearSegHead(tiny, max_iters=60, batch_size=8, warmup_iters=6, lr=3e-2, crop_size=64,
                         slide_crop=64, slide_stride=48)
    assert head.fit(digitseg[0]) is head
    assert head.n_iter_ == 60 and head.mode_ == "online" and head.in_channels_ == 72
    assert np.mean(head.history_[-10:]) < np.mean(head.history_[:5])
    r, b = head.evaluate(val_small), baseline(val_small)
    print(f"online linear head mIoU {100 * r['mIoU']:.2f} vs majority baseline {100 * b['mIoU']:.2f}")
    assert r["mIoU"] > 2.5 * b["mIoU"] and r["mIoU"] > 0.2


def test_cached_head_from_extract_beats_baseline_and_roundtrips(tmp_path, tiny, digitseg, val_small):
    from svgfeat.extraction import extract

    train = digitseg[0].subset(range(600))
    cache = extract(train, tmp_path / "train", encoder=tiny, groups=("dino", "latent"), preset="none",
                            size=64, progress=False)
    vcache = extract(val_small, tmp_path / "val", encoder=tiny, groups=("dino", "latent"), preset="none",
                             size=64, progress=False)
    head = LinearSegHead(max_iters=250, batch_size=16, warmup_iters=10, lr=1e-2, mask_stride=1).fit(cache, train)
    assert head.mode_ == "cached" and head.encoder_spec_["model"] == "test_tiny"
    r, b = head.evaluate(vcache, val_small), baseline(val_small)
    print(f"cached linear head mIoU {100 * r['mIoU']:.2f} vs majority baseline {100 * b['mIoU']:.2f}")
    assert r["mIoU"] > 3 * b["mIoU"]
    # dino group from the same cache
    dino = LinearSegHead(group="dino", max_iters=5, batch_size=8, warmup_iters=0).fit(cache, train)
    assert dino.in_channels_ == 64
    # save / load: same predictions on images (with an encoder) and on features
    path = head.save(tmp_path / "head.safetensors")
    assert path.with_suffix(".json").exists()
    back = LinearSegHead.load(path, encoder=tiny)
    head.encoder = tiny
    np.testing.assert_array_equal(back.predict(val_small.subset(range(3)))[1], head.predict(val_small.subset(range(3)))[1])
    feats = vcache.read("latent", slice(0, 4)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(feats), head.predict(feats))
    assert back.predict(feats).shape == (4, 64, 64) and back.predict_proba(feats)[0].shape == (11, 64, 64)


def test_sliding_window_equals_whole_image_when_the_crop_covers_it(tiny):
    rng = np.random.default_rng(0)
    feats = torch.randn(8, 72, 4, 4)
    masks = rng.integers(0, 3, (8, 64, 64))
    head = LinearSegHead(tiny, max_iters=3, warmup_iters=0, base_size=64).fit(feats, masks)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)  # not a multiple of 16 -> padded windows
    head.set_params(slide_crop=128, slide_stride=64, inference="slide")
    slide = head.image_logits(img)
    whole = head.image_logits(img, mode="whole")
    assert slide.shape == (3, 70, 90)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)
    # with smaller windows the result differs but has the same shape, and every pixel is covered
    head.set_params(slide_crop=32, slide_stride=24)
    assert head.image_logits(img).shape == (3, 70, 90)
    # slide_inference with a window function that is the identity on a constant tells the coverage
    x = torch.ones(1, 3, 50, 70)
    out = slide_inference(lambda c: c[:, :1] * 2, x, 32, 20, 1)
    torch.testing.assert_close(out, torch.full((1, 1, 50, 70), 2.0))


def test_estimator_contract_and_validation(tiny):
    from sklearn.base import clone

    head = LinearSegHead(tiny, lr=3e-3, crop_size=64)
    assert clone(head).get_params()["lr"] == 3e-3
    with pytest.raises(NotFittedError, match="not fitted"):
        head.predict(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="group"):
        LinearSegHead(group="cls").fit(torch.randn(2, 8, 2, 2), np.zeros((2, 32, 32), np.int64))
    with pytest.raises(ConfigError, match="max_iters"):
        LinearSegHead(max_iters=0).fit(torch.randn(2, 8, 2, 2), np.zeros((2, 32, 32), np.int64))
    with pytest.raises(DataError, match="masks"):
        LinearSegHead(max_iters=1).fit(torch.randn(2, 8, 2, 2), np.zeros((3, 32, 32), np.int64))
    with pytest.raises(DataError, match=r"labels \[7\] are outside 0..2"):
        LinearSegHead(max_iters=1, num_classes=3).fit(torch.randn(2, 8, 2, 2), np.full((2, 32, 32), 7))
    import svgfeat

    with pytest.raises(ConfigError, match="DINOv3-only"):
        LinearSegHead(svgfeat.create_model("test_tiny_dino"), max_iters=1, crop_size=32).fit("sample:digitseg/val")
    fitted = LinearSegHead(max_iters=2, warmup_iters=0).fit(torch.randn(4, 64, 2, 2), np.zeros((4, 32, 32), np.int64))
    with pytest.raises(ConfigError, match="64-channel"):
        fitted.set_params(encoder=tiny).predict(np.zeros((32, 32, 3), np.uint8))


def test_mmseg_integration_without_mmseg_names_the_extra(monkeypatch):
    import importlib
    import sys

    from svgfeat.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "mmseg", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "mmseg.models", raising=False)
    monkeypatch.delitem(sys.modules, "svgfeat.integrations.mmseg", raising=False)
    with pytest.raises(MissingDependencyError, match=r"svgfeat\[mmseg\]"):
        importlib.import_module("svgfeat.integrations.mmseg")
