"""`svgfeat seg train|eval|predict` and `svgfeat pca` on the embedded sample with the tiny encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli_helpers import run_cli
from PIL import Image

from svgfeat.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


run = run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A head trained from the dense-feature cache (the fast path) by the CLI."""
    out = tmp_path_factory.mktemp("seg")
    try:
        main(["seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--cached", "--iters", "150",
              "--lr", "1e-2", "--eval-limit", "40", "--out", str(out)])
    except SystemExit as e:
        assert e.code == 0
    return out


def test_train_cached_writes_head_config_and_metrics(trained):
    assert (trained / "head.safetensors").exists() and (trained / "cache" / "train" / "manifest.json").exists()
    cfg = json.loads((trained / "head.json").read_text())
    assert cfg["kind"] == "LinearSegHead" and cfg["num_classes"] == 11 and cfg["mode"] == "cached"
    assert cfg["params"]["crop_size"] == 64 and cfg["encoder"]["model"] == "test_tiny"
    m = json.loads((trained / "metrics.json").read_text())
    assert m["train"]["iters"] == 150 and 0.15 < m["val"]["mIoU"] <= 1
    assert len(m["val"]["IoU"]) == 11


def test_eval_prints_metrics_and_baseline(trained, capsys, tmp_path):
    code, out, err = run(["seg", "eval", "--data", "sample:digitseg", "--head", str(trained / "head.safetensors"),
                          "--model", "test_tiny", "--limit", "20", "--per-class", "--json", str(tmp_path / "m.json")],
                         capsys)
    assert code == 0, err
    assert "mIoU" in out and "majority-class baseline" in out and "digit 7" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["metrics"]["mIoU"] > saved["baseline"]["mIoU"]


def test_predict_writes_masks_and_overlays(trained, capsys, tmp_path):
    import skimage.data

    img = skimage.data.chelsea()[:100, :130]
    Image.fromarray(img).save(tmp_path / "cat.jpg")
    code, out, err = run(["seg", "predict", str(tmp_path / "cat.jpg"), "--head", str(trained / "head.safetensors"),
                          "--model", "test_tiny", "-o", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    labels = np.asarray(Image.open(tmp_path / "pred" / "cat_labels.png"))
    mask = Image.open(tmp_path / "pred" / "cat_mask.png")
    over = Image.open(tmp_path / "pred" / "cat_overlay.png")
    assert labels.shape == (100, 130) and labels.max() < 11
    assert mask.size == over.size == (130, 100) and mask.mode == over.mode == "RGB"


def test_train_online_and_errors(capsys, tmp_path):
    code, out, err = run(["seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--iters", "3",
                          "--batch-size", "2", "--no-eval", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "training online" in out and (tmp_path / "o" / "head.safetensors").exists()
    code, _, err = run(["seg", "train", "--data", str(tmp_path / "missing"), "--model", "test_tiny",
                        "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and err.startswith("Error:") and "not found" in err
    code, _, err = run(["seg", "eval", "--data", "sample:digitseg", "--head", str(tmp_path / "o" / "head.json"),
                        "--model", "test_tiny"], capsys)
    assert code == 2 and "Error:" in err


def test_pca_pictures(capsys, tmp_path):
    import skimage.data

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / f"{name}.png")
    args = ["pca", str(tmp_path / "astronaut.png"), str(tmp_path / "coffee.png"), "--model", "test_tiny",
            "--size", "128", "-o", str(tmp_path / "pca")]
    code, out, err = run(args, capsys)
    assert code == 0, err
    both = np.asarray(Image.open(tmp_path / "pca" / "astronaut_pca.png"))
    assert both.shape == (128, 256, 3) and "explained variance" in out  # the original beside its PCA map
    src = np.asarray(Image.open(tmp_path / "astronaut.png").resize((128, 128), Image.BICUBIC)).astype(int)
    assert np.abs(both[:, :128].astype(int) - src).mean() < 8  # the left half is the input the encoder saw
    pic = both[:, 128:]
    blocks = pic.reshape(8, 16, 8, 16, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # one colour per 16-px patch
    assert len({tuple(c) for c in pic.reshape(-1, 3)}) > 20
    code, out, err = run(args[:-2] + ["--fg-threshold", "0.5", "--side-by-side", "-o", str(tmp_path / "fg")], capsys)
    assert code == 0, err
    fg = np.asarray(Image.open(tmp_path / "fg" / "coffee_pca.png"))
    assert fg.shape == (128, 256, 3) and (fg[:, 128:] == 0).all(-1).any()  # black background tokens
    code, out, err = run(args[:-2] + ["--pca-only", "-o", str(tmp_path / "only")], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "only" / "astronaut_pca.png")), pic)
    code, _, err = run(args[:-4] + ["--size", "100", "-o", str(tmp_path / "bad")], capsys)
    assert code == 2 and "multiple of 16" in err
