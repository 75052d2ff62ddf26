"""Depth and segmentation data validation (issue Q.10): 8-bit depth PNGs need --depth-scale; NaN, all-zero and
all-invalid depth maps, RGB masks and out-of-range classes are refused per file with the file named -- a
recorded failure when evaluating, one error line on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_seg_cli import run  # one CLI runner for the dense command tests

from svgfeat.data.depth import open_depth_dataset, read_depth
from svgfeat.data.segmentation import open_seg_dataset
from svgfeat.errors import DataError
from svgfeat.heads.depth import ArrayDepthDataset, LinearDepthHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


def _depth_folder(root, depths: dict):
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    rng = np.random.default_rng(0)
    for stem, d in depths.items():
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        if isinstance(d, np.ndarray) and d.dtype.kind == "f":
            np.save(root / "depth" / f"{stem}.npy", d)
        else:
            Image.fromarray(d).save(root / "depth" / f"{stem}.png")
    return root


def test_eight_bit_depth_png_needs_a_depth_scale(tmp_path):
    raw = np.full((32, 32), 200, np.uint8)  # 8-bit: 0.2 m as millimetres -- almost surely not what it means
    _depth_folder(tmp_path / "d", {"a": raw})
    with pytest.raises(DataError, match=r"a\.png.*8-bit.*--depth-scale"):
        open_depth_dataset(tmp_path / "d").load_depth(0)
    np.testing.assert_allclose(open_depth_dataset(tmp_path / "d", depth_scale=20).load_depth(0), 10.0)
    sixteen = tmp_path / "mm.png"  # 16-bit millimetres stay the default
    Image.fromarray(np.full((4, 4), 2500, np.uint16)).save(sixteen)
    np.testing.assert_allclose(read_depth(sixteen), 2.5)


def test_nan_and_all_zero_depth_maps_are_refused_with_the_file_named(tmp_path):
    nan = np.full((32, 32), 2.0, np.float32)
    nan[3, 4] = np.nan
    _depth_folder(tmp_path / "d", {"nan": nan, "zero": np.zeros((32, 32), np.uint16),
                                   "ok": np.full((32, 32), 3000, np.uint16)})
    ds = open_depth_dataset(tmp_path / "d")
    with pytest.raises(DataError, match=r"nan\.npy.*1 NaN"):
        ds.load_depth(ds.paths.index("images/nan.png"))
    with pytest.raises(DataError, match=r"zero\.png.*no valid depth"):
        ds.load_depth(ds.paths.index("images/zero.png"))
    assert ds.load_depth(ds.paths.index("images/ok.png")).max() == pytest.approx(3.0)
    with pytest.raises(DataError, match="NaN"):
        ArrayDepthDataset([np.zeros((32, 32, 3), np.uint8)], [nan])
    with pytest.raises(DataError, match="NaN"):
        LinearDepthHead(max_iters=1).fit(np.random.rand(1, 8, 2, 2).astype(np.float32), nan[None])


def test_depth_evaluation_records_failures_per_file_and_refuses_all_failing(tmp_path, tiny):
    far = np.full((32, 32), 20000, np.uint16)  # 20 m: outside the head's 0.001-10 m, so no valid pixel
    _depth_folder(tmp_path / "d", {"a": np.full((32, 32), 2000, np.uint16), "b": np.zeros((32, 32), np.uint16),
                                   "c": far})
    head = LinearDepthHead(tiny, max_iters=1, warmup_iters=0).fit(np.random.rand(2, 72, 2, 2).astype(np.float32),
                                                                   np.ones((2, 32, 32), np.float32))
    r = head.evaluate(open_depth_dataset(tmp_path / "d"), progress_bar=False)
    assert r["images"] == 1
    assert [f["item"] for f in r["failures"]] == ["images/b.png", "images/c.png"]
    assert "no valid depth" in r["failures"][0]["error"] and "no valid ground-truth" in r["failures"][1]["error"]
    with pytest.raises(DataError, match=r"no usable item among the 2 evaluated; the first: images/b\.png"):
        head.evaluate(open_depth_dataset(tmp_path / "d").subset([1, 2]), progress_bar=False)


def test_depth_cli_refuses_eight_bit_pngs_in_one_line(tmp_path, capsys):
    _depth_folder(tmp_path / "d", {f"x{i}": np.full((32, 32), 100 + i, np.uint8) for i in range(4)})
    code, _, err = run(["depth", "train", "--data", str(tmp_path / "d"), "--split", "train", "--model",
                        "test_tiny", "--group", "dino", "--iters", "1", "--batch-size", "2", "--crop-size", "32",
                        "--no-eval", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "8-bit" in err and "--depth-scale" in err, err
    code, out, err = run(["depth", "train", "--data", str(tmp_path / "d"), "--depth-scale", "25", "--model",
                          "test_tiny", "--group", "dino", "--iters", "1", "--batch-size", "2", "--crop-size", "32",
                          "--no-eval", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["train"]["train_depth_mean"] == \
        pytest.approx(np.mean([100, 101, 102, 103]) / 25, rel=0.05)


def _seg_folder(root, masks: dict, classes=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, m in masks.items():
        Image.fromarray(np.zeros(m.shape[:2] + (3,), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(m).save(root / "masks" / f"{stem}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_rgb_masks_and_out_of_range_classes_are_refused_with_the_file_named(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 1
    _seg_folder(tmp_path / "rgb", {"a": rgb})
    with pytest.raises(DataError, match=r"a\.png.*RGB.*single-channel"):
        open_seg_dataset(tmp_path / "rgb", num_classes=3).load_mask(0)
    with pytest.raises(DataError, match=r"a\.png.*RGB"):
        open_seg_dataset(tmp_path / "rgb")  # the class scan reads the masks too
    m = np.zeros((16, 16), np.uint8)
    m[0, :3] = (1, 7, 255)
    _seg_folder(tmp_path / "k", {"b": m}, classes=["bg", "thing", "other"])
    with pytest.raises(DataError, match=r"b\.png.*\[7\].*0\.\.2"):
        open_seg_dataset(tmp_path / "k").load_mask(0)


def test_seg_evaluation_records_bad_masks_and_cli_trains_refuse_in_one_line(tmp_path, tiny, capsys):
    from svgfeat.heads.segmentation import LinearSegHead

    good, bad = np.zeros((32, 32), np.uint8), np.full((32, 32), 9, np.uint8)
    _seg_folder(tmp_path / "s", {"a": good, "b": bad}, classes=["bg", "fg"])
    head = LinearSegHead(tiny, max_iters=1, warmup_iters=0, num_classes=2).fit(
        np.random.rand(2, 72, 2, 2).astype(np.float32), np.zeros((2, 32, 32), np.int64))
    r = head.evaluate(open_seg_dataset(tmp_path / "s"), progress_bar=False)
    assert [f["item"] for f in r["failures"]] == ["images/b.png"] and "[9]" in r["failures"][0]["error"]
    code, _, err = run(["seg", "train", "--data", str(tmp_path / "s"), "--model", "test_tiny", "--group", "dino",
                        "--iters", "2", "--batch-size", "2", "--crop-size", "32", "--no-eval", "--out",
                        str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "b.png" in err and "[9]" in err, err
