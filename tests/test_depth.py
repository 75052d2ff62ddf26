"""Depth datasets (sample:depth, folders, NYUv2 layouts), augmentation, and the native linear depth head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError

from svgfeat.data.depth import (
    DepthTrainAugment,
    open_depth_dataset,
    read_depth,
    write_depth_folder,
)
from svgfeat.errors import ConfigError, DataError
from svgfeat.heads.depth import LinearDepthHead, bin_centers, colorize, decode_bins, sig_loss
from svgfeat.heads.depth_metrics import constant_baseline

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


@pytest.fixture(scope="module")
def sample():
    return open_depth_dataset("sample:depth/train"), open_depth_dataset("sample:depth/val")


# ------------------------------------------------------------------------------ datasets
def test_sample_is_deterministic_metric_and_learnable_cue(sample):
    tr, va = sample
    assert (len(tr), len(va)) == (480, 120)
    img, d = tr.load_pair(0)
    assert img.size == (96, 96) and d.shape == (96, 96) and d.dtype == np.float32
    again = open_depth_dataset("sample:depth", split="train")
    np.testing.assert_array_equal(np.asarray(again.load(7)), np.asarray(tr.load(7)))
    np.testing.assert_array_equal(again.load_depth(7), tr.load_depth(7))
    assert not np.array_equal(tr.load_depth(0), va.load_depth(0))
    images, depths = va.arrays()
    assert 0.5 < depths.min() and depths.max() < 10 and depths.std() > 1.0
    # fog: far pixels are closer to the fog colour than near ones (the cue a linear head can use)
    from svgfeat.data.depth import FOG

    dist = np.abs(images / 255.0 - FOG).sum(-1)
    near, far = depths < np.quantile(depths, 0.2), depths > np.quantile(depths, 0.8)
    assert dist[near].mean() > 2 * dist[far].mean()
    import svgfeat

    assert len(svgfeat.data.open_dataset("sample:depth/val")) == 120  # the shared sample: mechanism


def test_folder_nyu_layouts_and_depth_scale(tmp_path, sample):
    ds = sample[1].subset(range(4))
    write_depth_folder(ds, tmp_path / "folder")
    f = open_depth_dataset(tmp_path / "folder")
    assert len(f) == 4 and f.eval_crop is None
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(f.load(i)), np.asarray(ds.load(i)))
        np.testing.assert_allclose(f.load_depth(i), ds.load_depth(i), atol=5e-4)  # millimetre PNG
    # .npy in metres; --depth-scale rescales (here: values stored in centimetres)
    npy = tmp_path / "npy"
    (npy / "images").mkdir(parents=True)
    (npy / "depth").mkdir()
    ds.load(0).save(npy / "images" / "a.png")
    np.save(npy / "depth" / "a.npy", ds.load_depth(0) * 100)
    np.testing.assert_allclose(open_depth_dataset(npy, depth_scale=100).load_depth(0), ds.load_depth(0), rtol=1e-6)
    # NYUv2 mmseg layout (images/test + annotations/test) and BTS list files
    write_depth_folder(ds, tmp_path / "nyu", layout="nyu-mmseg", split="val")
    m = open_depth_dataset(tmp_path / "nyu", split="val")
    assert m.eval_crop == "eigen" and len(m) == 4 and m.paths[0].startswith("images/test/")
    lines = [f"/{m.paths[i]} {m.depth_paths[i]} 518.8579" for i in range(3)] + ["/images/test/x.jpg None 518.8579"]
    (tmp_path / "nyu" / "nyudepthv2_test_files_with_gt.txt").write_text("\n".join(lines) + "\n")
    lst = open_depth_dataset(tmp_path / "nyu", split="test")
    assert len(lst) == 3 and lst.eval_crop == "eigen" and lst.name == "nyu/test"
    np.testing.assert_array_equal(lst.load_depth(1), m.load_depth(1))
    (tmp_path / "bad.txt").write_text("../../etc/passwd images/test/a.png\n")
    with pytest.raises(DataError, match="leaves the dataset folder"):
        open_depth_dataset(tmp_path / "nyu", split_file=tmp_path / "bad.txt")
    with pytest.raises(DataError, match="not found"):
        open_depth_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="neither a NYUv2 root"):
        open_depth_dataset(tmp_path / "nyu" / "images")
    with pytest.raises(DataError, match="unknown depth sample"):
        open_depth_dataset("sample:nope")
    (tmp_path / "rgb.png").write_bytes(b"")
    with pytest.raises(DataError, match="cannot read depth map"):
        read_depth(tmp_path / "rgb.png")


def test_augmentation_keeps_image_and_depth_aligned():
    # depth increases left to right and the red channel encodes it
    d = np.tile(np.linspace(1, 9, 80, dtype=np.float32), (48, 1))
    img = np.zeros((48, 80, 3), np.uint8)
    img[..., 0] = (d * 25).astype(np.uint8)
    aug = DepthTrainAugment(crop=(40, 64), flip=True, brightness=None)
    flips = 0
    for seed in range(12):
        x, t = aug(Image.fromarray(img), d, np.random.default_rng(seed))
        assert x.shape == (3, 40, 64) and t.shape == (40, 64)
        red = x[0].numpy() * 0.229 + 0.485  # undo the normalisation
        np.testing.assert_allclose(red * 255 / 25, t, atol=0.06)
        flips += int(t[0, 0] > t[0, -1])
    assert 0 < flips < 12
    x, t = DepthTrainAugment(crop=(64, 96))(Image.fromarray(img), d, np.random.default_rng(0))
    assert t.shape == (64, 96) and (t[48:] == 0).all() and (t[:, 80:] == 0).all()  # padding is ignored depth


# ------------------------------------------------------------------------------ head pieces
def test_decode_bins_and_sig_loss_formulas():
    bins = bin_centers(256, 1e-3, 10.0)
    assert bins[0] == pytest.approx(1e-3) and bins[-1] == pytest.approx(10.0)
    assert torch.allclose(bins[1:] - bins[:-1], torch.full((255,), (10 - 1e-3) / 255), atol=1e-5)
    logits = torch.randn(2, 256, 3, 4)
    w = torch.relu(logits) + 0.1
    ref = (w / w.sum(1, keepdim=True) * bins.view(1, -1, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(decode_bins(logits, bins), ref, rtol=1e-5, atol=1e-5)
    one_hot = torch.full((1, 256, 1, 1), -50.0)
    one_hot[0, 100] = 50.0
    assert float(decode_bins(one_hot, bins, "softmax")) == pytest.approx(float(bins[100]), rel=1e-5)
    pred = torch.tensor([[1.0, 2.0, 4.0, 5.0]])
    gt = torch.tensor([[1.0, 1.0, 2.0, 0.0]])  # the last pixel has no ground truth
    g = np.log([1.0, 2.0, 2.0])
    expect = np.sqrt(g.var() + 0.15 * g.mean() ** 2)
    assert float(sig_loss(pred, gt)) == pytest.approx(expect, rel=1e-6)
    assert torch.isnan(sig_loss(pred, torch.zeros_like(gt)))
    c = colorize(np.array([[0.0, 5.0, 10.0]]), 0, 10)
    assert c.shape == (1, 3, 3) and c.dtype == np.uint8 and c[0, 0].sum() > c[0, 1].sum() > c[0, 2].sum()


def test_head_on_feature_arrays_learns_and_roundtrips(tmp_path, tiny):
    # features whose first channel is the depth of the patch: the head must learn the mapping
    rng = np.random.default_rng(0)
    depth_patch = rng.uniform(1, 9, (64, 1, 4, 4)).astype(np.float32)
    feats = np.concatenate([depth_patch, rng.normal(0, 1, (64, 71, 4, 4)).astype(np.float32)], 1)
    depths = np.kron(depth_patch[:, 0], np.ones((4, 4), np.float32))  # stride-4 targets [64, 16, 16]
    head = LinearDepthHead(max_iters=200, warmup_iters=10, lr=3e-2, batch_size=16, depth_stride=4)
    assert head.fit(feats, depths) is head
    assert head.mode_ == "cached" and head.in_channels_ == 72 and head.n_iter_ == 200
    assert head.train_depth_mean_ == pytest.approx(float(depths.mean()), rel=1e-6)
    r = head.evaluate(feats, np.kron(depth_patch[:, 0], np.ones((16, 16), np.float32)))
    base = constant_baseline(head.train_depth_mean_, list(np.kron(depth_patch[:, 0], np.ones((16, 16)))))
    assert r["rmse"] < 0.5 * base["rmse"], (r["rmse"], base["rmse"])
    pred = head.predict(feats[:3])
    assert pred.shape == (3, 64, 64) and pred.min() >= 1e-3 and pred.max() <= 10
    path = head.save(tmp_path / "h.safetensors")
    back = LinearDepthHead.load(path, encoder=tiny)
    np.testing.assert_array_equal(back.predict(feats[:3]), pred)
    assert back.train_depth_mean_ == pytest.approx(head.train_depth_mean_) and back.crop_size == (416, 544)
    # sliding window equals the whole image when one window covers it; TTA keeps the shape
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    whole = back.image_depth(img, tta=False)
    back.set_params(inference="slide", slide_crop=(64, 96), slide_stride=(32, 48))
    np.testing.assert_allclose(back.image_depth(img, tta=False), whole, rtol=0, atol=1e-6)
    back.set_params(slide_crop=(32, 32), slide_stride=(16, 16))
    assert back.image_depth(img).shape == (50, 70)


def test_online_training_and_cached_training_from_extract(tmp_path, tiny, sample):
    from svgfeat.extraction import extract

    tr, va = sample[0].subset(range(64)), sample[1].subset(range(8))
    online = LinearDepthHead(tiny, max_iters=6, warmup_iters=1, batch_size=4, crop_size=(64, 80), lr=1e-2)
    online.fit(tr)
    assert online.mode_ == "online" and len(online.step_times_) == 6 and np.isfinite(online.history_).all()
    cache = extract(tr, tmp_path / "c", encoder=tiny, groups=("dino", "latent"), preset="resize", size=96,
                    progress=False)
    head = LinearDepthHead(tiny, group="dino", max_iters=40, warmup_iters=4, batch_size=8, lr=1e-2).fit(cache, tr)
    assert head.in_channels_ == 64 and head.encoder_spec_["model"] == "test_tiny"
    assert np.mean(head.history_[-5:]) < np.mean(head.history_[:3])
    r = head.evaluate(va)
    assert r["images"] == 8 and r["eval_crop"] is None and r["tta"] and 0 < r["rmse"] < 5
    rc = head.evaluate(cache, tr)  # on the cache itself (targets under the cache transform)
    assert rc["images"] == 64 and not rc["tta"]


def test_validation_errors(tiny):
    import svgfeat

    feats, depths = torch.randn(2, 8, 2, 2), np.ones((2, 8, 8), np.float32)
    with pytest.raises(NotFittedError, match="not fitted"):
        LinearDepthHead(tiny).predict(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="bins"):
        LinearDepthHead(bins="cubic").fit(feats, depths)
    with pytest.raises(ConfigError, match="min_depth"):
        LinearDepthHead(min_depth=5, max_depth=1).fit(feats, depths)
    with pytest.raises(DataError, match="depth maps must be"):
        LinearDepthHead(max_iters=1).fit(feats, np.ones((3, 8, 8)))
    with pytest.raises(ConfigError, match="DINOv3-only"):
        LinearDepthHead(svgfeat.create_model("test_tiny_dino"), max_iters=1, crop_size=(32, 32)).fit(
            "sample:depth/val")
    fitted = LinearDepthHead(max_iters=1, warmup_iters=0).fit(torch.randn(2, 64, 2, 2), depths)
    with pytest.raises(ConfigError, match="64-channel"):
        fitted.set_params(encoder=tiny).predict(np.zeros((32, 32, 3), np.uint8))


def test_nyu_layout_is_evaluated_on_the_eigen_crop(tmp_path, tiny, sample):
    write_depth_folder(sample[1].subset(range(2)), tmp_path / "nyu", layout="nyu-mmseg", split="test")
    nyu = open_depth_dataset(tmp_path / "nyu", split="val")
    head = LinearDepthHead(tiny, max_iters=1, warmup_iters=0).fit(torch.randn(2, 72, 2, 2), np.ones((2, 8, 8)))
    r = head.evaluate(nyu)
    assert r["eval_crop"] == "eigen" and r["images"] == 2 and r["tta"]
    # the Eigen box of a 96 x 96 image drops the borders: fewer pixels than the whole image
    assert r["pixels"] < 2 * 96 * 96
    assert head.set_params(eval_crop="none", tta=False).evaluate(nyu)["pixels"] == 2 * 96 * 96
