"""Cache reading: random access without loading shards, dtypes, device views, verify, stats, CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import svgfeat
from svgfeat.cache.stats import ChannelMoments, compute_stats, load_stats, save_official_stats
from svgfeat.errors import CacheError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    return svgfeat.extract("sample:digits/train", out, model="test_tiny", size=64, limit=96, shard_size=32,
                           batch_size=16, groups=["latent", "cls", "pooled", "dino", "residual_raw", "cls_l0"],
                           progress=False)


def test_reader_api(cache):
    assert len(cache) == 96 and cache.classes == [str(i) for i in range(10)]
    assert cache.labels.dtype == np.int64 and len(cache.paths) == 96
    assert cache.read("latent").shape == (96, 72, 4, 4)
    assert cache.read("latent", 5).shape == (72, 4, 4)
    rows = [95, 3, 40, 3]
    assert np.array_equal(cache.read("cls", rows), cache.read("cls")[rows])
    assert np.array_equal(cache.read("cls", slice(10, 50, 7)), cache.read("cls")[10:50:7])
    batches = list(cache.iter_batches(["cls", "pooled"], batch_size=40))
    assert [len(r) for r, _ in batches] == [40, 40, 16]
    assert np.array_equal(np.concatenate([b["cls"] for _, b in batches]), cache.read("cls"))
    with pytest.raises(CacheError, match="not in cache"):
        cache.read("registers")
    assert cache.abspath(0).startswith("sample:digits/train/")


def test_reading_one_row_touches_few_bytes(tmp_path):
    c = svgfeat.extract("sample:digits/val", tmp_path / "big", model="test_tiny", size=256, limit=64,
                        shard_size=64, batch_size=32, groups=["dino"], progress=False, dtype="fp32")
    shard = c.root / c.manifest["shards"][0]["file"]
    size = shard.stat().st_size
    row_bytes = 64 * 16 * 16 * 4
    assert size > 60 * row_bytes
    code = (f"import svgfeat,resource,sys; c=svgfeat.open_cache({str(c.root)!r});"
            "r0=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "import builtins; f=open('/proc/self/io'); before=f.read(); f.close();"
            "x=c.read('dino', 37); f=open('/proc/self/io'); after=f.read(); f.close();"
            "g=lambda s:int([l for l in s.split('\\n') if l.startswith('rchar')][0].split()[1]);"
            "print(g(after)-g(before))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    read = int(r.stdout.strip().splitlines()[-1])
    assert read < size / 10, f"read {read} bytes of a {size}-byte shard for one row"


def test_dtypes(tmp_path):
    kw = dict(model="test_tiny", size=64, limit=8, groups=["cls"], progress=False)
    a = svgfeat.extract("sample:digits/val", tmp_path / "f32", dtype="fp32", **kw)
    b = svgfeat.extract("sample:digits/val", tmp_path / "bf16", dtype="bf16", **kw)
    assert a.read("cls").dtype == np.float32 and b.read("cls").dtype == np.float32
    ref = torch.from_numpy(a.read("cls")).to(torch.bfloat16).float().numpy()
    assert np.array_equal(b.read("cls"), ref)


def test_device_views_are_shared(cache):
    from svgfeat.cache import clear_device_views

    clear_device_views()
    t1 = cache.to("cpu", ["cls"])["cls"]
    t2 = svgfeat.open_cache(cache.root).to("cpu", groups=["cls", "pooled"])["cls"]
    assert t1 is t2 and t1.shape == (96, 64)


def test_verify_detects_corruption(cache, tmp_path):
    from svgfeat.extraction import verify_cache

    assert verify_cache(cache.root) == []
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache.root, copy)
    f = copy / "shard-00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    assert any("checksum mismatch" in p for p in verify_cache(copy))
    r = subprocess.run([sys.executable, "-m", "svgfeat", "cache", "verify", str(copy)], capture_output=True, text=True)
    assert r.returncode == 1 and "shard-00001" in r.stderr
    r = subprocess.run([sys.executable, "-m", "svgfeat", "cache", "info", str(cache.root)], capture_output=True, text=True)
    assert r.returncode == 0 and "test_tiny" in r.stdout and "latent" in r.stdout


def test_stats_exact_and_streaming(cache, tmp_path):
    st = compute_stats(cache.root, ["latent", "cls"], batch_size=7)
    lat = cache.read("latent").astype(np.float64)
    flat = np.moveaxis(lat, 1, 0).reshape(72, -1)
    assert np.allclose(st["latent"]["mean"], flat.mean(1), atol=1e-10)
    assert np.allclose(st["latent"]["std"], flat.std(1, ddof=1), atol=1e-9)
    assert cache.latent_stats()["mean"].shape == (72,)
    assert set(st["alignment"]) == {"mu_dino", "sigma_dino", "mu_res", "sigma_res"}
    st2 = compute_stats(cache.root, ["latent"], batch_size=50)
    assert np.allclose(st2["latent"]["mean"], st["latent"]["mean"], atol=1e-12)
    save_official_stats(tmp_path / "s.pt", st["latent"]["mean"], st["latent"]["std"])
    d = torch.load(tmp_path / "s.pt", weights_only=True)
    assert d["dinov3_sp_mean"].shape == (1, 1, 72) and d["dinov3_sp_std"].dtype == torch.float32
    assert np.allclose(load_stats(tmp_path / "s.pt")["mean"], st["latent"]["mean"], atol=1e-6)


def test_reads_official_stats_format():
    from conftest import golden_path

    p = golden_path("../reference/dinov3_sp_stats.pt")
    st = load_stats(p)
    assert st["mean"].shape == (392,) and abs(st["mean"].mean() - 0.017610) < 1e-4


def test_channel_moments_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(3, 2, size=(50, 4, 3))
    m = ChannelMoments()
    m.update(a[:20])
    m.update(a[20:])
    mean, std = m.mean_std()
    assert np.allclose(mean, a.transpose(1, 0, 2).reshape(4, -1).mean(1))
    assert np.allclose(std, a.transpose(1, 0, 2).reshape(4, -1).std(1, ddof=1))
