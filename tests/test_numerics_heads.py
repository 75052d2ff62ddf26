"""One numerics object for the heads (issue P point 3): the dense heads' ``precision`` (autocast of the encoder and
head forward passes, loss and predictions in float32, recorded in head.json / metrics.json / eval JSON),
``train-ae --precision`` (``--amp`` a deprecated alias) and the numerics record of the probe / kNN results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli_helpers import run_cli

from svgfeat.errors import ConfigError
from svgfeat.heads._dense import SyncStatsBatchNorm2d
from svgfeat.heads.depth import LinearDepthHead
from svgfeat.heads.segmentation import LinearSegHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


run = run_cli


def _feats(n=4, c=16, seed=0):
    return torch.randn(n, c, 2, 2, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ parameter and persistence
@pytest.mark.parametrize("cls", [LinearSegHead, LinearDepthHead])
def test_precision_is_a_parameter_recorded_and_restored(cls, tmp_path):
    from sklearn.base import clone

    from svgfeat.checkpoints import load_file, read_safetensors_config, save_safetensors

    assert cls().precision == "fp32" and cls().get_params()["precision"] == "fp32"  # never bf16 by default
    assert clone(cls(precision="bf16")).get_params()["precision"] == "bf16"
    y = np.zeros((4, 32, 32), np.int64) if cls is LinearSegHead else np.full((4, 32, 32), 2.0, np.float32)
    head = cls(max_iters=2, warmup_iters=0, precision="bf16").fit(_feats(), y)
    cfg = head.config()
    assert cfg["params"]["precision"] == "bf16"
    assert cfg["numerics"]["precision"] == "bf16" and cfg["numerics"]["device_type"] == "cpu"
    assert cfg["numerics"]["autocast_dtype"] == "bfloat16" and "torch" in cfg["numerics"]
    head.save(tmp_path / "h.safetensors")
    assert json.loads((tmp_path / "h.json").read_text())["numerics"]["precision"] == "bf16"
    back = cls.load(tmp_path / "h.safetensors")
    assert back.precision == "bf16" and back.config()["numerics"] == cfg["numerics"]
    # a config written before the parameter existed (no "numerics", no params.precision) loads as fp32
    old = read_safetensors_config(tmp_path / "h.safetensors")
    old.pop("numerics")
    old["params"].pop("precision")
    save_safetensors(tmp_path / "old.safetensors", load_file(tmp_path / "h.safetensors"), old)
    legacy = cls.load(tmp_path / "old.safetensors")
    assert legacy.precision == "fp32" and legacy.config()["numerics"]["precision"] == "fp32"
    np.testing.assert_array_equal(legacy.predict(_feats(2, seed=1)), cls.load(tmp_path / "h.safetensors")
                                  .set_params(precision="fp32").predict(_feats(2, seed=1)))


@pytest.mark.parametrize("cls", [LinearSegHead, LinearDepthHead])
def test_bad_precision_or_device_is_one_config_error(cls):
    y = np.zeros((2, 32, 32), np.int64) if cls is LinearSegHead else np.full((2, 32, 32), 2.0, np.float32)
    with pytest.raises(ConfigError, match="precision fp16 cannot run on cpu") as e:
        cls(max_iters=1, precision="fp16").fit(_feats(2), y)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="precision 'fp64'"):
        cls(max_iters=1, precision="fp64").fit(_feats(2), y)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            cls(max_iters=1, device="cuda").fit(_feats(2), y)


# ------------------------------------------------------------------------------ BatchNorm under autocast
def test_sync_stats_batchnorm_takes_bf16_input_under_autocast():
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    ref, bn = SyncStatsBatchNorm2d(6).train(), SyncStatsBatchNorm2d(6).train()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    bn.load_state_dict(ref.state_dict())
    y32 = ref(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = bn(x.bfloat16())
    assert y16.dtype == torch.float32 and torch.isfinite(y16).all()  # normalised in float32, not in bf16
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32
    # the statistics of the bf16-rounded input (float64 sums): only the input rounding differs
    torch.testing.assert_close(y16, y32, atol=0.03, rtol=0.02)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=2e-2, rtol=1e-2)
    xb = x.bfloat16()
    torch.testing.assert_close(y16, _bn_from(ref)(xb.float()), atol=1e-6, rtol=1e-6)  # = float32 on the rounded x
    bn.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(bn(xb)).all()


def _bn_from(ref):
    bn = SyncStatsBatchNorm2d(ref.num_features).train()
    bn.load_state_dict(ref.state_dict())
    return bn


# ------------------------------------------------------------------------------ bf16 online training
@pytest.fixture(scope="module")
def seg_runs():
    import svgfeat
    from svgfeat.data.segmentation import open_seg_dataset

    tiny = svgfeat.create_model("test_tiny")
    ds = open_seg_dataset("sample:digitseg/train").subset(range(32))
    kw = dict(max_iters=8, batch_size=4, warmup_iters=1, lr=1e-2, crop_size=32, slide_crop=32, slide_stride=32)
    return {p: LinearSegHead(tiny, precision=p, **kw).fit(ds) for p in ("fp32", "bf16")}, ds


@pytest.fixture(scope="module")
def depth_runs():
    import svgfeat
    from svgfeat.data.depth import open_depth_dataset

    tiny = svgfeat.create_model("test_tiny")
    ds = open_depth_dataset("sample:depth/train").subset(range(16))
    kw = dict(max_iters=6, batch_size=4, warmup_iters=1, lr=1e-2, crop_size=(32, 48))
    return {p: LinearDepthHead(tiny, precision=p, **kw).fit(ds) for p in ("fp32", "bf16")}, ds


def test_bf16_online_seg_training_is_finite_float32_and_close_to_fp32(seg_runs):
    heads, ds = seg_runs
    h32, h16 = heads["fp32"], heads["bf16"]
    assert h16.mode_ == "online" and np.isfinite(h16.history_).all() and len(h16.history_) == 8
    # the same crops and initialisation: bf16 autocast changes the losses by rounding only (measured 2.1e-4)
    assert h16.history_ != h32.history_  # the autocast did run
    np.testing.assert_allclose(h16.history_, h32.history_, rtol=5e-3)
    img = ds.load(0)
    l16, l32 = h16.image_logits(img), h32.image_logits(img)
    assert l16.dtype == torch.float32 and l16.shape == l32.shape
    assert float((l16 - l32).abs().max()) < 0.02 * float(l32.abs().max())  # measured 5e-3
    p16 = h16.predict([img])[0]
    assert p16.dtype == np.int64 and (p16 == h32.predict([img])[0]).mean() > 0.97  # measured 0.99-1.0
    feats = torch.randn(2, h16.in_channels_, 2, 2)
    assert h16.logits_from_features(feats).dtype == torch.float32
    assert h16.config()["numerics"]["precision"] == "bf16"


def test_bf16_online_depth_training_is_finite_float32_and_close_to_fp32(depth_runs):
    heads, ds = depth_runs
    h32, h16 = heads["fp32"], heads["bf16"]
    assert h16.mode_ == "online" and np.isfinite(h16.history_).all()
    assert h16.history_ != h32.history_
    np.testing.assert_allclose(h16.history_, h32.history_, rtol=5e-3)  # measured 7.2e-4
    assert h16.train_depth_mean_ == pytest.approx(h32.train_depth_mean_, rel=1e-6)  # the same targets
    img = ds.load(0)
    d16, d32 = h16.predict([img])[0], h32.predict([img])[0]
    assert d16.dtype == np.float32 and d16.shape == d32.shape and np.isfinite(d16).all()
    assert float(np.abs(d16 - d32).max()) < 0.01 * float(np.abs(d32).max())  # measured 1.8e-3-2.5e-3
    assert h16.predict_features(torch.randn(2, h16.in_channels_, 2, 2)).dtype == torch.float32


def test_fp16_training_scales_the_loss(monkeypatch):
    """fp16 gradients of a per-pixel mean loss are subnormal (here ~1/16384 per logit, 100 classes): the loss
    scaler keeps the head's gradient within 2e-3 of float32's (measured 6.5e-4; 4.0e-3 without it). fp16 autocast
    runs on the CPU in torch but Numerics refuses it there, so the test allows it for once."""
    import svgfeat.heads._dense as dense
    import svgfeat.numerics as numerics

    monkeypatch.setitem(numerics.SUPPORTED, "cpu", ("fp32", "bf16", "fp16"))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 16, 32, 32, generator=g)
    y = torch.randint(0, 100, (16, 32, 32), generator=g).numpy()
    kw = dict(max_iters=1, warmup_iters=0, batch_size=16, num_classes=100)
    grad = {p: LinearSegHead(precision=p, **kw).fit(X, y).module_[1].weight.grad for p in ("fp32", "fp16")}
    err = float((grad["fp16"] - grad["fp32"]).norm() / grad["fp32"].norm())
    assert 0 < err < 2e-3
    monkeypatch.setattr(dense.DenseHead, "_grad_scaler", lambda self: None)
    unscaled = LinearSegHead(precision="fp16", **kw).fit(X, y).module_[1].weight.grad
    assert float((unscaled - grad["fp32"]).norm() / grad["fp32"].norm()) > 2e-3  # why the scaler is there
    head = LinearSegHead(precision="fp16", **dict(kw, max_iters=3)).fit(X, y)
    assert np.isfinite(head.history_).all() and head.logits_from_features(X[:1]).dtype == torch.float32


# ------------------------------------------------------------------------------ CLI and evaluation records
def test_seg_cli_records_the_numerics(tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run(["seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--group", "dino",
                        "--iters", "2", "--batch-size", "2", "--warmup", "0", "--crop-size", "32", "--eval-limit", "2",
                        "--precision", "bf16", "--out", out], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["numerics"]["precision"] == "bf16" and m["numerics"]["device_type"] == "cpu" and "val" in m
    assert json.loads((out / "head.json").read_text())["numerics"]["precision"] == "bf16"
    head = out / "head.safetensors"
    code, _, err = run(["seg", "eval", "--data", "sample:digitseg", "--head", head, "--model", "test_tiny",
                        "--limit", "2", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["numerics"]["precision"] == "fp32"  # the CLI default
    code, _, err = run(["seg", "eval", "--data", "sample:digitseg", "--head", head, "--model", "test_tiny",
                        "--limit", "2", "--precision", "bf16", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["numerics"]["precision"] == "bf16"
    code, _, err = run(["seg", "predict", "sample:digitseg/val", "--head", head, "--model", "test_tiny",
                        "--precision", "fp16", "-o", tmp_path / "p"], capsys)
    assert code == 2 and err.count("\n") == 1 and "fp16 cannot run on cpu" in err
    code, _, err = run(["seg", "train", "--data", "sample:digitseg", "--precision", "fp64", "--out", tmp_path / "x"],
                       capsys)
    assert code == 2 and "fp64" in err


def test_depth_cli_and_library_record_the_numerics(tmp_path, capsys):
    from svgfeat.evaluation.dense import evaluate_dense

    out = tmp_path / "d"
    code, _, err = run(["depth", "train", "--data", "sample:depth", "--model", "test_tiny", "--group", "dino",
                        "--iters", "2", "--batch-size", "2", "--warmup", "0", "--crop-size", "32,32",
                        "--no-eval", "--precision", "bf16", "--out", out], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["numerics"]["precision"] == "bf16"
    import svgfeat

    enc = svgfeat.create_model("test_tiny")
    r = evaluate_dense("depth", "sample:depth", out / "head.safetensors", enc, limit=2, log=lambda *_: None)
    assert r["numerics"]["precision"] == "bf16"  # the library keeps the head's own precision unless told
    r = evaluate_dense("depth", "sample:depth", out / "head.safetensors", enc, limit=2, precision="fp32",
                       log=lambda *_: None)
    assert r["numerics"]["precision"] == "fp32" and np.isfinite(r["metrics"]["rmse"])


# ------------------------------------------------------------------------------ train-ae
AE = ["--model", "test_tiny", "--size", "64", "--steps", "1", "--batch-size", "2", "--lpips", "random", "--workers",
      "0", "--stats-images", "2", "--num-samples", "2", "--no-progress"]


def test_train_ae_precision_and_the_deprecated_amp_alias(tmp_path, capsys):
    code, _, err = run(["train-ae", "sample:photos", "--out", tmp_path / "a", "--amp", "bf16", *AE], capsys)
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if "--amp" in ln]
    assert len(warn) == 1 and "deprecated" in warn[0] and "--precision bf16" in warn[0]
    assert "train-ae: bf16 autocast on cpu" in err  # never switched on silently
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["numerics"]["precision"] == "bf16"
    code, _, err = run(["train-ae", "sample:photos", "--out", tmp_path / "b", "--precision", "fp32", *AE], capsys)
    assert code == 0 and "--amp" not in err and "autocast" not in err
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["numerics"]["precision"] == "fp32"
    code, _, err = run(["train-ae", "sample:photos", "--out", tmp_path / "c", *AE], capsys)  # auto: fp32 on the CPU
    assert code == 0 and json.loads((tmp_path / "c" / "summary.json").read_text())["numerics"]["precision"] == "fp32"
    # a resume in another precision is refused with one line
    more = [a if a != "1" else "2" for a in AE]
    code, _, err = run(["train-ae", "sample:photos", "--out", tmp_path / "b", "--precision", "bf16", *more], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "cannot resume" in err and "precision fp32" in err and "bf16" in err
    code, _, err = run(["train-ae", "sample:photos", "--out", tmp_path / "x", "--amp", "bf16", "--precision", "fp32",
                        *AE], capsys)
    assert code == 2 and "--amp" in err and "--precision" in err
    from svgfeat.training.ae_train import train_ae

    tiny = dict(model="test_tiny", size=64, steps=1, batch_size=2, lpips="random", workers=0, stats_images=2,
                num_samples=2, progress=False)
    with pytest.warns(DeprecationWarning, match="precision"):  # the library's old keyword still works
        s = train_ae("sample:photos", tmp_path / "lib", amp="bf16", **tiny)
    assert s["numerics"]["precision"] == "bf16"
    saved = json.loads((tmp_path / "lib" / "summary.json").read_text())
    assert saved["numerics"]["autocast_dtype"] == "bfloat16"


# ------------------------------------------------------------------------------ probe / kNN
def test_probe_and_knn_results_record_their_numerics():
    from svgfeat.heads.knn import KNNClassifier
    from svgfeat.heads.probe import LinearProbe

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-2, 0.5, (30, 6)), rng.normal(2, 0.5, (30, 6))]).astype(np.float32)
    y = np.repeat([0, 1], 30)
    rep = LinearProbe(lrs=(0.1,), iterations=20).fit(X, y).report()
    assert rep["numerics"]["precision"] == "fp32" and rep["numerics"]["device_type"] == "cpu"
    assert rep["numerics"]["autocast_dtype"] is None and "torch" in rep["numerics"]
    res = KNNClassifier(k=(5,)).fit(X, y).evaluate(X, y)
    assert res["numerics"]["precision"] == "fp32" and res["numerics"]["device_type"] == "cpu"
    json.dumps(rep), json.dumps(res)  # JSON-safe
