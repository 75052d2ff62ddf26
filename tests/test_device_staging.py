"""Host <-> device staging (one home: svgfeat/device_staging.py), the throughput options of extraction,
and the faiss packaging/doctor contract -- everything of issue N that runs without a GPU."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import svgfeat
from svgfeat.device_staging import DeviceStage, HostRing, Staged, pack_views, packed_size
from svgfeat.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class RecordingEvent:
    """A completed-on-demand event: records when it is waited on (stands in for torch.cuda.Event on CPU)."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def synchronize(self):
        self.log.append(("sync", self.name))


def test_ring_reuses_its_buffers_and_waits_before_reuse():
    ring = HostRing(slots=2, pin=False)
    log = []
    for b in range(50):  # 50 batches: buffers allocated once per slot, never per batch
        i, buf = ring.acquire(1000 - b)  # later batches are smaller (the last batch of a shard)
        assert buf.numel() >= 1000 - b
        ring.guard(i, RecordingEvent(log, b))
    assert ring.allocations == 2
    # slot reuse waited for the event recorded two batches earlier, in order
    assert [n for _, n in log] == list(range(48))
    i, buf = ring.acquire(4000)  # a larger batch grows that slot once
    assert ring.allocations == 3 and buf.numel() >= 4000


def test_ring_needs_two_slots():
    with pytest.raises(ValueError, match="at least 2 slots"):
        HostRing(slots=1, pin=False)


def test_staged_results_survive_the_reuse_of_their_slot():
    """The writer may hold results much longer than the ring depth (a whole shard): a result is copied out
    of its slot before the slot is overwritten, and its values are the ones copied in."""
    ring = HostRing(slots=2, pin=False)
    log, results = [], []
    for b in range(6):
        specs = {"latent": ((4, 3), torch.float16), "cls": ((4,), torch.float32)}
        i, buf = ring.acquire(packed_size(specs))
        host = pack_views(buf, specs)
        host["latent"].fill_(b)
        host["cls"].fill_(-b)
        staged = Staged(host, RecordingEvent(log, b))
        ring.guard(i, holder=staged)
        results.append(staged)
    ring.drain()
    for b, r in enumerate(results):
        g = r.wait()
        assert torch.equal(g["latent"], torch.full((4, 3), b, dtype=torch.float16))
        assert torch.equal(g["cls"], torch.full((4,), -b, dtype=torch.float32))
    assert sorted(n for _, n in log) == list(range(6))  # every copy waited on exactly once


def test_staged_release_is_thread_safe():
    buf = torch.arange(1 << 16, dtype=torch.float32)
    s = Staged({"x": buf}, RecordingEvent([], 0))
    outs = []
    ts = [threading.Thread(target=lambda: outs.append(s.wait())) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    buf.zero_()  # the slot is reused: every caller holds the copy
    assert all(torch.equal(o["x"], torch.arange(1 << 16, dtype=torch.float32)) for o in outs)
    assert all(o["x"] is outs[0]["x"] for o in outs)  # copied once


def test_cpu_stage_is_a_no_op():
    st = DeviceStage("cpu")
    assert not st.cuda and st.stream is None and st.up is None and st.down is None
    x = torch.randn(3, 4)
    with st.scope():
        assert st.to_device(x) is x
        out = st.to_host({"a": x}).wait()
    assert out["a"] is x
    st.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_one_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        DeviceStage("cuda:1")


def test_no_per_batch_pinning_and_events_only_in_the_staging_module():
    """Reading check made executable: no pinned allocation in per-batch code, every CUDA event in one file."""
    pkg = ROOT / "svgfeat"
    for rel in ("extraction/encode.py", "extraction/loader.py", "extraction/engine.py", "cache/device.py",
                "data/gpu_decode.py", "generation/train.py"):
        src = (pkg / rel).read_text()
        assert "pin_memory=True" not in src and ".pin_memory()" not in src, rel
    users = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py") if "torch.cuda.Event(" in p.read_text()]
    assert users == ["device_staging.py"], users
    src = (pkg / "device_staging.py").read_text()
    assert "ev.record(self.stream)" in src and "torch.cuda.device(self.device)" in src


def test_cache_to_cpu_goes_through_the_stage(tmp_path):
    from svgfeat.cache import from_arrays, open_cache

    x = np.random.default_rng(0).standard_normal((37, 5)).astype(np.float16)
    from_arrays(tmp_path / "c", {"cls": x}, labels=np.zeros(37, np.int64), shard_size=8)
    c = open_cache(tmp_path / "c")
    g = c.to("cpu", ["cls"], dtype=torch.bfloat16)["cls"]
    assert g.dtype == torch.bfloat16 and torch.equal(g, torch.from_numpy(x).to(torch.bfloat16))


# ------------------------------------------------------------------------------------- throughput options
def _imgs(tmp_path, photos, n=3):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(n):
        Image.fromarray(photos[k]).save(d / f"{k}.jpg")
    return d


def test_compile_equals_eager_fp32_within_1e5(tmp_path, photos, one_thread):
    """torch.compile (inductor, CPU) of the encoder forward against eager, fp32, same images."""
    from svgfeat.extraction.encode import Encoding

    enc = svgfeat.create_model("test_tiny").eval()
    x = svgfeat.preprocess(photos[:3], size=64)
    a = Encoding(enc, ["latent", "cls", "pooled"], "fp32", "cpu", "fp32")(x).wait()
    b = Encoding(enc, ["latent", "cls", "pooled"], "fp32", "cpu", "fp32", compile=True)(x).wait()
    for g in a:
        assert a[g].shape == b[g].shape and (a[g] - b[g]).abs().max().item() <= 1e-5, g


def test_throughput_options_are_recorded(tmp_path, photos, one_thread):
    d = _imgs(tmp_path, photos)
    c = svgfeat.extract(d, tmp_path / "c", model="test_tiny", size=32, groups=["cls"], progress=False,
                        channels_last=True, prefetch=2)
    t = c.manifest["throughput"]
    assert t == {"compile": False, "channels_last": True, "cudnn_benchmark": False, "prefetch": 2, "workers": 0,
                 "staging": "none (cpu)"}
    ref = svgfeat.extract(d, tmp_path / "r", model="test_tiny", size=32, groups=["cls"], progress=False)
    assert ref.manifest["throughput"]["channels_last"] is False  # default: on CUDA only
    assert np.abs(c.read("cls").astype(np.float32) - ref.read("cls").astype(np.float32)).max() < 1e-2


def test_prefetch_zero_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "svgfeat", "extract", "sample:photos", "-o", str(tmp_path / "c"),
                        "--model", "test_tiny", "--prefetch", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--prefetch" in r.stderr


# ------------------------------------------------------------------------------------- faiss packaging
def test_no_install_puts_faiss_cpu_next_to_faiss_gpu():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"])
    assert "faiss" not in core  # optional: exact torch search without it
    extras = meta["optional-dependencies"]
    assert extras["faiss"] == ["faiss-cpu>=1.8"]
    assert [re.split(r"[<>=]", r)[0] for r in extras["faiss-gpu"]] == ["faiss-gpu-cu12"]
    for name, reqs in extras.items():  # no single extra names both flavours
        flavours = {"cpu" if r.startswith("faiss-cpu") else "gpu" for r in reqs if r.startswith("faiss-")}
        assert len(flavours) <= 1, name
    readme = (ROOT / "README.md").read_text()
    test_cmd = re.search(r'^pip install -e "\.\[dev[^"]*\]"', readme, re.M).group(0)
    assert "faiss" in test_cmd  # CI installs the README's test extras: the faiss tests run there


def test_doctor_warns_when_cpu_and_gpu_faiss_are_both_installed(tmp_path):
    """A real second distribution record (a dist-info on sys.path), as pip would leave it."""
    info = tmp_path / "faiss_gpu_cu12-1.9.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faiss-gpu-cu12\nVersion: 1.9.0\n")
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "svgfeat", "doctor"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("faiss "))
    assert "active" in line or "not installed" in line
    warn = [x for x in r.stdout.splitlines() if x.startswith("WARNING") and "faiss" in x]
    from importlib import metadata

    try:
        metadata.version("faiss-cpu")
        has_cpu = True
    except metadata.PackageNotFoundError:
        has_cpu = False
    assert bool(warn) == has_cpu and (not warn or "faiss-gpu-cu12" in warn[0])
