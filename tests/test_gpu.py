"""The CUDA suite (issue N point 6): `pytest -m gpu`. Skipped without CUDA; run first whenever a GPU is there.

One test at least per GPU path: extraction on cuda and on a non-default device / foreign current stream,
--gpu-decode against PIL, bf16 against fp32, --compile, faiss-gpu index and kNN (shared resources, the k
limit, IVF training), torchrun/nccl with 1 and 2 processes, cache.to("cuda"), DiT train steps, the seg and
depth heads. Sizes are tiny (meant to take a minute or two on one H100 with compile time; not measured yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import svgfeat

CUDA = torch.cuda.is_available()
NGPU = torch.cuda.device_count() if CUDA else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]
GROUPS = ["latent", "cls", "pooled"]


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 comparisons mean fp32: TF32 off in every test, the caller's flags restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory, photos):
    from PIL import Image

    d = tmp_path_factory.mktemp("jpegs")
    for k in range(10):
        im = Image.fromarray(photos[k % len(photos)])
        im.resize((im.width - 7 * k, im.height - 3 * k)).save(d / f"{k:02d}.jpg", quality=92)
    return d


def _extract(src, out, **kw):
    kw = dict(dict(model="test_tiny", size=64, groups=GROUPS, dtype="fp32", batch_size=4, shard_size=8,
                   progress=False), **kw)
    return svgfeat.extract(src, out, **kw)


def _close(a, b, tol):
    for g in GROUPS:
        x, y = a.read(g).astype(np.float32), b.read(g).astype(np.float32)
        assert x.shape == y.shape and np.abs(x - y).max() <= tol * max(1.0, np.abs(x).max()), g


# ------------------------------------------------------------------------------------- extraction
def test_extract_on_cuda_equals_cpu(jpegs, tmp_path):
    cpu = _extract(jpegs, tmp_path / "cpu")
    gpu = _extract(jpegs, tmp_path / "gpu", device="cuda")
    assert gpu.paths == cpu.paths and gpu.manifest["throughput"]["staging"] == "pinned ring"
    assert gpu.manifest["throughput"]["channels_last"] is True and gpu.manifest["numerics"]["device_type"] == "cuda"
    _close(cpu, gpu, 1e-3)


def test_extract_on_a_device_other_than_the_current_one(jpegs, tmp_path):
    """Two GPUs: cuda:1 while the current device stays cuda:0 (never set_device). One GPU: the caller's
    current stream is a foreign side stream; the stage's own stream and events must still order the copies."""
    ref = _extract(jpegs, tmp_path / "ref", device="cuda:0")
    before = torch.cuda.current_device()
    if NGPU >= 2:
        torch.cuda.set_device(0)
        other = _extract(jpegs, tmp_path / "other", device="cuda:1")
        assert torch.cuda.current_device() == 0
    else:
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            other = _extract(jpegs, tmp_path / "other", device="cuda:0")
    assert torch.cuda.current_device() == before
    for g in GROUPS:  # same kernels on the same kind of card: bit-identical rows, whatever the device/stream
        assert np.array_equal(ref.read(g), other.read(g)), g


def test_gpu_decode_against_pil_on_cuda(jpegs, tmp_path):
    """nvJPEG's IDCT/upsampling differs slightly from libjpeg-turbo: close pixels, identical geometry."""
    from svgfeat.data.decode import load_image
    from svgfeat.data.gpu_decode import decode_transform, read_bytes
    from svgfeat.data.transforms import Transform

    files = sorted(jpegs.glob("*.jpg"))
    t = Transform("svg", 64)
    x, bad = decode_transform([read_bytes(f) for f in files], t, "cuda")
    ref = torch.stack([t(load_image(f)) for f in files])
    assert bad == {} and x.device.type == "cuda" and x.shape == ref.shape
    diff = (x.cpu() - ref).abs() * 0.226 * 255  # back to 8-bit levels
    assert diff.mean() < 1.5 and diff.max() < 40, (diff.mean(), diff.max())
    dev = _extract(jpegs, tmp_path / "dev", device="cuda", gpu_decode=True)
    pil = _extract(jpegs, tmp_path / "pil", device="cuda")
    assert dev.paths == pil.paths and dev.transform["decoder"] == "device"


def test_bf16_against_fp32_on_cuda(jpegs, tmp_path):
    a = _extract(jpegs, tmp_path / "fp32", device="cuda")
    b = _extract(jpegs, tmp_path / "bf16", device="cuda", precision="bf16")
    assert b.manifest["numerics"]["precision"] == "bf16"
    for g in ("latent", "cls"):
        x, y = a.read(g).astype(np.float32), b.read(g).astype(np.float32)
        rel = np.linalg.norm(x - y) / np.linalg.norm(x)
        assert 0 < rel < 5e-2, (g, rel)


def test_compile_on_cuda_equals_eager(jpegs, tmp_path):
    a = _extract(jpegs, tmp_path / "eager", device="cuda")
    b = _extract(jpegs, tmp_path / "compiled", device="cuda", compile=True)
    assert b.manifest["throughput"]["compile"] is True
    _close(a, b, 1e-4)


def test_cache_to_cuda_equals_the_cache(tmp_path):
    from svgfeat.cache import from_arrays, open_cache

    x = np.random.default_rng(0).standard_normal((300, 7, 3)).astype(np.float16)
    from_arrays(tmp_path / "c", {"latent": x}, labels=np.zeros(300, np.int64), shard_size=32)
    c = open_cache(tmp_path / "c")
    import svgfeat.cache.device as cd

    old, cd.STAGE_BYTES = cd.STAGE_BYTES, 512  # many blocks: the 2-slot ring is reused many times
    try:
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):  # a foreign current stream must not matter
            t = c.to("cuda", ["latent"], dtype=torch.float32)["latent"]
        last = f"cuda:{NGPU - 1}"
        u = c.to(last, ["latent"])["latent"]
    finally:
        cd.STAGE_BYTES = old
    assert t.device.type == "cuda" and torch.equal(t.cpu(), torch.from_numpy(x).float())
    assert str(u.device) == last and torch.equal(u.cpu(), torch.from_numpy(x))


# ------------------------------------------------------------------------------------- faiss / kNN
def _faiss_gpu():
    from conftest import require_extra

    faiss = require_extra("faiss", "faiss-gpu")
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss is the CPU build (pip install 'svgfeat[faiss-gpu]')")
    return faiss


def test_faiss_gpu_flat_index_shared_resources_and_the_k_limit():
    faiss = _faiss_gpu()
    from svgfeat.heads import faiss_gpu
    from svgfeat.heads.retrieval import FaissIndex

    rng = np.random.default_rng(0)
    X, q = rng.standard_normal((5000, 32)).astype(np.float32), rng.standard_normal((20, 32)).astype(np.float32)
    cpu = FaissIndex(factory="Flat", metric="l2").fit(X)
    a = FaissIndex(factory="Flat", metric="l2", device="cuda").fit(X)
    b = FaissIndex(factory="Flat", metric="l2", device="cuda").fit(X)
    assert a._gpu is not None and faiss_gpu.gpu_resources(faiss, 0) is faiss_gpu._RESOURCES[0]
    assert len(faiss_gpu._RESOURCES) == 1  # one StandardGpuResources per device, shared by both indexes
    Dc, Ic = cpu.search(q, 10)
    Dg, Ig = a.search(q, 10)
    assert (Ic == Ig).mean() > 0.99 and np.allclose(Dc, Dg, rtol=1e-4, atol=1e-3)
    with pytest.warns(UserWarning, match="2048"):
        Dk, Ik = b.search(q, 3000)  # beyond faiss-gpu's limit: exact torch search, said so
    assert Ik.shape == (20, 3000) and (Ik[:, :10] == Ic).mean() > 0.99


def test_faiss_gpu_ivf_is_trained_on_the_gpu():
    _faiss_gpu()
    from svgfeat.heads.retrieval import FaissIndex

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, 16)).astype(np.float32) * 5
    X = (centres[rng.integers(0, 50, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    idx = FaissIndex(factory="IVF64,Flat", metric="l2", device="cuda", nprobe=16).fit(X)
    assert idx.recall_["recall"] > 0.9 and idx._gpu is not None
    from svgfeat.heads.retrieval import import_faiss

    ivf = import_faiss().extract_index_ivf(idx._index)
    assert ivf.is_trained and ivf.clustering_index is None  # the GPU k-means index was dropped after training


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_on_cuda_equals_cpu_even_with_tf32_on(backend):
    if backend == "faiss":
        _faiss_gpu()
    from svgfeat.heads.knn import KNNClassifier

    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((3000, 64)).astype(np.float32), rng.integers(0, 10, 3000)
    Q = rng.standard_normal((200, 64)).astype(np.float32)
    ref = KNNClassifier(k=(10, 20), backend="torch", device="cpu").fit(X, y)
    torch.backends.cuda.matmul.allow_tf32 = True  # a caller's global flag must not change the neighbours
    knn = KNNClassifier(k=(10, 20), backend=backend, device="cuda").fit(X, y)
    s0, i0 = ref.kneighbors(Q)
    s1, i1 = knn.kneighbors(Q)
    assert np.array_equal(i0, i1) and np.array_equal(s0, s1)
    assert torch.backends.cuda.matmul.allow_tf32 is True  # restored


# ------------------------------------------------------------------------------------- torchrun / nccl
def _torchrun_extract(n, src, out, port):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
                        str(port), "-m", "svgfeat", "extract", str(src), "-o", str(out), "--model", "test_tiny",
                        "--size", "64", "--dtype", "fp32", "--batch-size", "4", "--shard-size", "4", "--device",
                        "cuda", "--groups", ",".join(GROUPS)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return svgfeat.open_cache(out)


@pytest.mark.parametrize("n", [1, 2])
def test_torchrun_nccl_extract_equals_one_process(n, jpegs, tmp_path):
    if n > NGPU:
        pytest.skip(f"needs {n} CUDA devices")
    one = _extract(jpegs, tmp_path / "one", device="cuda", shard_size=4)
    many = _torchrun_extract(n, jpegs, tmp_path / "many", 29600 + n)
    assert many.paths == one.paths
    _close(one, many, 1e-5)


# ------------------------------------------------------------------------------------- heads on CUDA
@pytest.mark.parametrize("preload_limit", [1 << 40, 0], ids=["device-resident", "streamed"])
def test_dit_train_steps_on_cuda(tmp_path, preload_limit):
    """Device-resident latents, and streamed ones (staging ring, handoff to the training stream)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _dit_helpers import MemCache, tiny_model

    from svgfeat.generation.train import LatentBatcher, train_dit

    r = train_dit(MemCache(), tiny_model(), tmp_path, steps=30, batch_size=16, lr=2e-3, ema_decay=0.9,
                  log_every=10, ckpt_every=1000, progress=False, device="cuda",
                  data_options={"preload_limit": preload_limit})
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert r["step"] == 30 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    stats = {"mean": np.zeros(8, np.float32), "std": np.ones(8, np.float32)}
    cpu = LatentBatcher(MemCache(), 16, 0, stats, 3, "cpu", preload_limit=preload_limit)
    gpu = LatentBatcher(MemCache(), 16, 0, stats, 3, "cuda", preload_limit=preload_limit)
    try:
        for step in range(5):  # more batches than ring slots: every batch equals its CPU twin
            a, ya = cpu.batch(step, 0, 16)
            b, yb = gpu.batch(step, 0, 16)
            assert torch.equal(a, b.cpu()) and torch.equal(ya, yb.cpu())
    finally:
        cpu.close()
        gpu.close()


def test_seg_head_on_cuda():
    from svgfeat.data.segmentation import open_seg_dataset
    from svgfeat.heads.segmentation import LinearSegHead

    tiny = svgfeat.create_model("test_tiny")  # its own copy: the head moves it to the GPU

    tr, va = open_seg_dataset("sample:digitseg/train"), open_seg_dataset("sample:digitseg/val").subset(range(20))
    head = LinearSegHead(tiny, max_iters=30, batch_size=8, warmup_iters=3, lr=3e-2, crop_size=64, slide_crop=64,
                         slide_stride=48, device="cuda").fit(tr)
    assert head.n_iter_ == 30 and np.mean(head.history_[-5:]) < np.mean(head.history_[:5])
    assert 0 <= head.evaluate(va)["mIoU"] <= 1


def test_depth_head_on_cuda():
    from svgfeat.heads.depth import LinearDepthHead

    rng = np.random.default_rng(0)
    depth_patch = rng.uniform(1, 9, (64, 1, 4, 4)).astype(np.float32)
    feats = np.concatenate([depth_patch, rng.normal(0, 1, (64, 71, 4, 4)).astype(np.float32)], 1)
    depths = np.kron(depth_patch[:, 0], np.ones((4, 4), np.float32))
    head = LinearDepthHead(max_iters=100, warmup_iters=10, lr=3e-2, batch_size=16, depth_stride=4,
                           device="cuda").fit(feats, depths)
    pred = head.predict(feats[:3])
    assert pred.shape == (3, 64, 64) and np.isfinite(pred).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = head.evaluate(feats, np.kron(depth_patch[:, 0], np.ones((16, 16), np.float32)))
    assert np.isfinite(r["rmse"])
