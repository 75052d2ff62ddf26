"""`svgfeat depth train|eval|predict` end to end: the tiny encoder on sample:depth, and the full-size golden model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli_helpers import run_cli
from PIL import Image

from conftest import golden_path
from svgfeat.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


run = run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The issue's command, as documented: defaults only."""
    out = tmp_path_factory.mktemp("depth")
    try:
        main(["depth", "train", "--data", "sample:depth", "--model", "test_tiny", "--cached", "--out", str(out)])
    except SystemExit as e:
        assert e.code == 0
    return out


def test_cached_train_beats_the_mean_depth_baseline_by_30_percent(trained):
    m = json.loads((trained / "metrics.json").read_text())
    for key in ("rmse", "abs_rel", "delta1", "baseline_rmse", "silog", "log10", "delta2", "delta3"):
        assert np.isfinite(m[key]), key
    print(f"sample:depth val RMSE {m['rmse']:.3f} vs mean-depth baseline {m['baseline_rmse']:.3f}")
    assert m["rmse"] <= 0.7 * m["baseline_rmse"]
    assert m["val"]["images"] == 120 and m["val"]["data"] == "sample:depth/val" and m["train"]["mode"] == "cached"
    cfg = json.loads((trained / "head.json").read_text())
    assert cfg["kind"] == "LinearDepthHead" and cfg["params"]["n_bins"] == 256 and cfg["encoder"]["model"] == "test_tiny"
    assert (trained / "cache" / "train" / "manifest.json").exists()


def test_eval_and_predict(trained, capsys, tmp_path):
    head = str(trained / "head.safetensors")
    code, out, err = run(["depth", "eval", "--data", "sample:depth", "--head", head, "--model", "test_tiny",
                          "--limit", "10", "--no-tta", "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    assert "RMSE" in out and "mean-depth baseline" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["metrics"]["images"] == 10 and not saved["metrics"]["tta"]
    assert saved["metrics"]["rmse"] < saved["baseline"]["rmse"]
    import skimage.data

    Image.fromarray(skimage.data.coffee()[:90, :120]).save(tmp_path / "cup.png")
    code, out, err = run(["depth", "predict", str(tmp_path / "cup.png"), "--head", head, "--model", "test_tiny",
                          "-o", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    colour = np.asarray(Image.open(tmp_path / "pred" / "cup_depth.png"))
    side = np.asarray(Image.open(tmp_path / "pred" / "cup_side.png"))
    mm = np.asarray(Image.open(tmp_path / "pred" / "cup_depth_mm.png"))
    assert colour.shape == (90, 120, 3) and side.shape == (90, 240, 3) and mm.shape == (90, 120)
    np.testing.assert_array_equal(side[:, :120], skimage.data.coffee()[:90, :120])
    np.testing.assert_array_equal(side[:, 120:], colour)
    assert 1 <= mm.min() and mm.max() <= 10000  # millimetres inside the head's range


def test_errors_are_one_line(capsys, tmp_path):
    code, _, err = run(["depth", "train", "--data", str(tmp_path / "missing"), "--model", "test_tiny",
                        "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and err.startswith("Error:") and "not found" in err and "Traceback" not in err
    code, _, err = run(["depth", "train", "--data", "sample:depth", "--model", "test_tiny", "--crop-size", "a,b",
                        "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "crop size" in err
    (tmp_path / "h.safetensors").write_bytes(b"not a checkpoint")
    code, _, err = run(["depth", "eval", "--data", "sample:depth", "--head", str(tmp_path / "h.safetensors"),
                        "--model", "test_tiny"], capsys)
    assert code == 2 and err.startswith("Error:")


def test_full_size_architecture_train_and_predict(capsys, tmp_path):
    """Golden full-size SVG (DINOv3-S+/16 + residual, 392 channels): online train, eval and predict."""
    weights = ["--dinov3", str(golden_path("dinov3_vits16plus_random.pth")), "--svg",
               str(golden_path("svg_ae_shared.ckpt")), "--svg-config", str(golden_path("svg_ae_shared.yaml"))]
    out = tmp_path / "full"
    code, stdout, err = run(["depth", "train", "--data", "sample:depth", *weights, "--iters", "2", "--batch-size",
                             "1", "--crop-size", "64,64", "--eval-limit", "2", "--out", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["mode"] == "online" and m["val"]["images"] == 2
    assert all(np.isfinite(m[k]) for k in ("rmse", "abs_rel", "delta1", "baseline_rmse"))
    assert json.loads((out / "head.json").read_text())["in_channels"] == 392
    code, stdout, err = run(["depth", "eval", "--data", "sample:depth", "--head", str(out / "head.safetensors"),
                             *weights, "--limit", "2", "--json", str(tmp_path / "e.json")], capsys)
    assert code == 0, err
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["metrics"]["images"] == 2 and e["metrics"]["tta"] and np.isfinite(e["baseline"]["rmse"])
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(tmp_path / "grey.png")
    code, _, err = run(["depth", "predict", str(tmp_path / "grey.png"), "--head", str(out / "head.safetensors"),
                        *weights, "-o", str(tmp_path / "pred")], capsys)
    assert code == 0, err
    for suffix in ("depth", "side", "depth_mm"):
        assert (tmp_path / "pred" / f"grey_{suffix}.png").exists()
    assert Image.open(tmp_path / "pred" / "grey_side.png").size == (112, 40)
