"""The one numerics object (issue P3) and other devices (issue N5), from the user's side.

GPU availability is simulated where the machine has none (the availability checks are monkeypatched); what
is asserted is the device type autocast actually runs on, the refusals, and the records written by the
commands that run here on the CPU."""

import functools
import json

import pytest
import torch

import svgfeat
from svgfeat.errors import ConfigError
from svgfeat.extraction.encode import autocast_context
from svgfeat.numerics import Numerics, parse_device
from svgfeat.training.ae_train import ae_numerics

pytestmark = pytest.mark.usefixtures("one_thread")


def _true_like(fn):
    """A stand-in for an availability check that answers True (keeps ``__wrapped__``, which torch._dynamo reads)."""
    fake = functools.wraps(fn)(lambda *a, **k: True)
    fake.__wrapped__ = getattr(fn, "__wrapped__", fn)
    return fake


@pytest.fixture
def fake_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", _true_like(torch.backends.mps.is_available))


@pytest.fixture
def fake_xpu(monkeypatch):
    if not hasattr(torch, "xpu"):
        pytest.skip("this torch has no torch.xpu module")
    monkeypatch.setattr(torch.xpu, "is_available", _true_like(torch.xpu.is_available))


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def autocast_state(device_type):
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


# ----------------------------------------------------------------------------------------------- the object
def test_fp32_is_no_autocast_and_bf16_autocasts_on_the_cpu():
    with Numerics.for_device("cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with Numerics.for_device("cpu", "bf16").autocast():
        assert autocast_state("cpu") == (True, torch.bfloat16)
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_record_round_trips_and_names_every_field():
    n = Numerics(precision="bf16", device_type="cuda", tf32=True, compile=True)
    r = n.record()
    assert {"precision", "device_type", "tf32", "compile", "autocast_dtype", "torch", "timm"} <= set(r)
    assert r["autocast_dtype"] == "bfloat16" and r["compile"] is True and r["tf32"] is True
    assert json.loads(json.dumps(r)) == r and Numerics.from_record(r) == n
    assert Numerics.for_device("cpu").record()["autocast_dtype"] is None


@pytest.mark.parametrize("kw, match", [
    (dict(precision="fp8"), "precision 'fp8'"),
    (dict(precision="fp16"), "fp16 cannot run on cpu"),
    (dict(tf32=True), "tf32 applies to CUDA"),
])
def test_what_cannot_run_is_refused_not_recorded(kw, match):
    with pytest.raises(ConfigError, match=match):
        Numerics.for_device("cpu", **kw)


def test_tf32_policy_is_set_for_the_block_and_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with Numerics(device_type="cuda", tf32=True).autocast():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with Numerics(device_type="cuda", tf32=False).autocast():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_compile_flag_compiles_only_when_set():
    f = torch.nn.Linear(2, 2)
    assert Numerics().maybe_compile(f) is f
    assert Numerics(compile=True).maybe_compile(f) is not f


# ----------------------------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_error_in_the_python_api(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device"):
        parse_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        svgfeat.load_encoder(model="test_tiny", device="cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=svgfeat.create_model("test_tiny"),
                        device="cuda", size=64, limit=4)
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_missing_cuda_index_and_unknown_devices(fake_cuda):
    with pytest.raises(ConfigError, match=r"1 CUDA device\(s\)"):
        parse_device("cuda:3")
    with pytest.raises(ConfigError, match="svgfeat runs on"):
        parse_device("meta")
    with pytest.raises(ConfigError, match="expected cpu, cuda"):
        parse_device("gpu0")


def test_mps_autocasts_on_mps_not_cpu(fake_mps):
    n = Numerics.for_device("mps", "fp16")
    assert n.device_type == "mps" and n.autocast_dtype == torch.float16
    with n.autocast():
        assert autocast_state("mps") == (True, torch.float16)
        assert not torch.is_autocast_enabled("cpu")  # the old bug: autocast("cpu") on mps, a no-op there
    # the extraction step takes the same path
    with autocast_context("mps", "fp16"):
        assert torch.is_autocast_enabled("mps") and not torch.is_autocast_enabled("cpu")


def test_bf16_on_mps_is_refused_and_float64_is_kept_off_mps(fake_mps):
    with pytest.raises(ConfigError, match="bf16 cannot run on mps"):
        Numerics.for_device("mps", "bf16")
    with pytest.raises(ConfigError, match="bf16 cannot run on mps"):
        autocast_context("mps", "bf16")
    n = Numerics.for_device("mps")
    assert not n.has_float64
    with pytest.raises(ConfigError, match="float64"):
        n.require_float64("autoencoder training")
    with pytest.raises(ConfigError, match="float64"):
        ae_numerics("mps", "fp32")


def test_no_float64_buffer_goes_to_mps(fake_mps):
    enc = svgfeat.create_model("test_tiny")
    assert any(b.dtype == torch.float64 for b in enc.buffers())  # the fixed alignment statistics
    ref = enc.align.fixed_stats.clone()
    moved = Numerics.for_device("mps").to_device(enc, "cpu")  # the move itself needs an mps device
    assert not any(b.dtype == torch.float64 for b in moved.buffers())
    assert torch.equal(moved.align.fixed_stats.isnan(), ref.isnan())
    assert any(b.dtype == torch.float64 for b in Numerics().to_device(svgfeat.create_model("test_tiny"), "cpu").buffers())


def test_mps_without_the_backend_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS backend is not available"):
        Numerics.for_device("mps")


def test_xpu_autocasts_on_xpu(fake_xpu):
    with Numerics.for_device("xpu", "bf16").autocast():
        assert autocast_state("xpu") == (True, torch.bfloat16) and not torch.is_autocast_enabled("cpu")


def test_cuda_without_bf16_refuses_bf16(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        Numerics.for_device("cuda", "bf16")
    assert Numerics.for_device("cuda", "fp16").autocast_dtype == torch.float16


# ----------------------------------------------------------------------------------------------- recorded
def test_extraction_manifest_records_the_numerics_object(tmp_path):
    c = svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=svgfeat.create_model("test_tiny"),
                        size=64, limit=4, precision="bf16", progress=False)
    rec = c.manifest["numerics"]
    assert Numerics.from_record(rec) == Numerics(precision="bf16", device_type="cpu")
    assert rec["compile"] is False and rec["tf32"] is False and rec["autocast_dtype"] == "bfloat16"


STATS = {"mean": [0.0] * 4, "std": [1.0] * 4}


def test_dit_training_records_numerics_and_bf16_is_opt_in(tmp_path):
    from svgfeat.generation.train import train_dit

    cache = svgfeat.from_arrays(tmp_path / "lat", {"latent": torch.randn(8, 4, 2, 2).numpy()},
                                labels=list(range(8)))
    r = train_dit(cache, "test_dit_tiny", tmp_path / "run", steps=1, batch_size=4, log_every=1, ckpt_every=1,
                  progress=False, model_overrides={"num_classes": 8}, stats=STATS)
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["numerics"]["precision"] == "fp32" and cfg["numerics"]["autocast_dtype"] is None  # the default
    from svgfeat.checkpoints import read_safetensors_config

    assert read_safetensors_config(r["ema"])["numerics"]["precision"] == "fp32"
    # the same run asked in bf16 is refused on resume (its checkpoints are fp32)
    with pytest.raises(ConfigError, match="precision fp32, requested bf16"):
        train_dit(cache, "test_dit_tiny", tmp_path / "run", steps=2, batch_size=4, log_every=1, ckpt_every=1,
                  progress=False, model_overrides={"num_classes": 8}, precision="bf16", stats=STATS)


def test_serve_info_records_the_numerics(tmp_path):
    from conftest import require_extra

    require_extra("faiss", "faiss")
    from svgfeat.heads.retrieval import FaissIndex
    from svgfeat.serve.engine import SearchService

    cache = svgfeat.create_model("test_tiny")
    cache = svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=cache, size=64, limit=4, progress=False)
    svc = SearchService(FaissIndex().fit(cache))
    assert Numerics.from_record(svc.info()["numerics"]) == Numerics()


def test_image_queries_are_encoded_in_the_precision_of_the_index_cache(tmp_path):
    from conftest import require_extra

    require_extra("faiss", "faiss")
    from svgfeat.heads.retrieval import FaissIndex
    from svgfeat.serve.engine import SearchService

    enc = svgfeat.create_model("test_tiny")
    cache = svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=enc, size=64, limit=4, progress=False,
                            groups=["pooled"], precision="bf16")
    idx = FaissIndex().fit(cache)
    assert idx.provenance_["numerics"]["precision"] == "bf16"
    idx.save(tmp_path / "i.faiss")
    svc = SearchService(tmp_path / "i.faiss", enc)
    assert svc.numerics.precision == "bf16" and svc.info()["numerics"]["precision"] == "bf16"
    res = svc.by_image(svgfeat.open_dataset("sample:digits/val").load(2), 1)
    assert res[0]["id"] == 2  # the query, encoded as its cache row was, finds that row
    assert SearchService(idx, enc, numerics=Numerics()).numerics.precision == "fp32"  # an explicit choice wins
