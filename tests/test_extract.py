"""Extraction: bad files, equality with encode(), resume after SIGKILL, torchrun, mismatch refusal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import svgfeat
from svgfeat.errors import CacheError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory, photos):
    """Good images plus every kind of bad file the issue lists."""
    d = tmp_path_factory.mktemp("messy")
    names = []
    for i, a in enumerate(photos):
        Image.fromarray(a).save(d / f"good_{i}.jpg", quality=92)
        names.append(f"good_{i}.jpg")
    (d / "zero.jpg").write_bytes(b"")
    full = (d / "good_0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (d / "text.jpg").write_text("this is not an image\n")
    Image.fromarray(photos[1]).convert("CMYK").save(d / "cmyk.jpg")
    a16 = (photos[2][..., 0].astype(np.uint16) * 257)
    Image.fromarray(a16).save(d / "sixteen.png")
    rgba = np.dstack([photos[3], np.full(photos[3].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(photos[0]).convert("L").save(d / "gray.png")
    Image.fromarray(photos[0]).convert("P").save(d / "palette.gif")
    return d


def test_bad_files_are_recorded_and_good_ones_match_encode(messy_folder, tmp_path):
    from svgfeat.data.decode import load_image
    from svgfeat.data.transforms import Transform

    enc = svgfeat.create_model("test_tiny")
    c = svgfeat.extract(messy_folder, tmp_path / "c", encoder=enc, size=64, alignment="fixed", shard_size=4,
                        batch_size=3, groups=["latent", "cls", "pooled", "residual_raw"], progress=False)
    fails = dict(c.failures)
    assert fails.keys() == {"zero.jpg", "truncated.jpg", "text.jpg"}
    assert fails["zero.jpg"].startswith("empty-file")
    assert fails["text.jpg"].startswith("not-an-image")
    assert fails["truncated.jpg"].startswith("truncated")
    assert len(c) == 9 and "cmyk.jpg" in c.paths and "sixteen.png" in c.paths
    assert c.manifest["encoder"]["alignment"] == "fixed" and c.manifest["encoder"]["fixed_stats"]
    x = torch.stack([Transform("svg", 64)(load_image(messy_folder / p)) for p in c.paths])
    ref = enc.encode(x)
    got = torch.from_numpy(c.read("latent").astype(np.float32))
    assert (got - ref.latent).abs().max() < 2e-2  # fp16 storage
    assert torch.allclose(got, ref.latent.half().float())
    # the 16-bit PNG decodes to a real picture, not a saturated one
    assert 20 < np.asarray(load_image(messy_folder / "sixteen.png")).mean() < 235


def test_cli_exit_status_reports_failures(messy_folder, tmp_path):
    r = subprocess.run([sys.executable, "-m", "svgfeat", "extract", str(messy_folder), "-o", str(tmp_path / "c"),
                        "--model", "test_tiny", "--size", "64"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert "3 file(s) failed" in r.stderr and "truncated" in r.stderr


def test_batch_alignment_equals_encoding_the_same_batches(tmp_path):
    from svgfeat.data.transforms import Transform

    enc = svgfeat.create_model("test_tiny")
    c = svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=enc, size=64, limit=20, batch_size=8,
                        shard_size=10, progress=False)
    ds = svgfeat.open_dataset("sample:digits/val")
    x = torch.stack([Transform("svg", 64)(ds.load(i)) for i in range(20)])
    # shards of 10 items, batches of 8 rows inside a shard: [0:8], [8:10], [10:18], [18:20]
    ref = torch.cat([enc.encode(x[a:b]).latent for a, b in [(0, 8), (8, 10), (10, 18), (18, 20)]])
    assert torch.equal(torch.from_numpy(c.read("latent").astype(np.float32)), ref.half().float())


def _extract_cmd(out):
    return [sys.executable, "-m", "svgfeat", "extract", "sample:digits/train", "-o", str(out), "--model", "test_tiny",
            "--size", "64", "--limit", "400", "--shard-size", "40", "--batch-size", "20"]


def _tensors(c):
    return {g: c.read(g) for g in c.groups}


def test_resume_after_sigkill_is_identical(tmp_path):
    ref = subprocess.run(_extract_cmd(tmp_path / "ref"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    p = subprocess.Popen(_extract_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard-*.safetensors"))) < 3:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(out.glob("shard-*.safetensors")))
    assert 0 < done < 10, f"kill landed after {done} shards"
    # no partial shard is ever visible under a shard name
    for f in out.glob("shard-*.safetensors"):
        svgfeat.cache.shards.ShardReader(f).read("cls", 0)
    with pytest.raises(CacheError, match="incomplete"):
        svgfeat.open_cache(out)
    r = subprocess.run(_extract_cmd(out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = svgfeat.open_cache(tmp_path / "ref"), svgfeat.open_cache(out)
    assert a.paths == b.paths and (a.labels == b.labels).all()
    for g, v in _tensors(a).items():
        assert np.array_equal(v, b.read(g)), g
    assert [s["sha256"] for s in a.manifest["shards"]] == [s["sha256"] for s in b.manifest["shards"]]


def test_torchrun_two_processes_equal_one(tmp_path):
    one = svgfeat.extract("sample:digits/val", tmp_path / "one", model="test_tiny", size=64, limit=60,
                          shard_size=16, batch_size=8, progress=False)
    env = dict(os.environ, SVGFEAT_BACKEND="gloo", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29533", "-m", "svgfeat", "extract", "sample:digits/val", "-o", str(tmp_path / "two"),
                        "--model", "test_tiny", "--size", "64", "--limit", "60", "--shard-size", "16",
                        "--batch-size", "8"], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    two = svgfeat.open_cache(tmp_path / "two")
    assert one.paths == two.paths
    for g in one.groups:
        assert np.array_equal(one.read(g), two.read(g)), g


def test_mismatched_request_is_refused_and_matching_one_reused(tmp_path, monkeypatch):
    enc = svgfeat.create_model("test_tiny")
    kw = dict(size=64, limit=12, shard_size=8, batch_size=4, progress=False)
    svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=enc, **kw)
    with pytest.raises(CacheError, match=r"transform.size: cache has 64, requested 128"):
        svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=enc, **{**kw, "size": 128})
    with pytest.raises(CacheError, match="groups"):
        svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=enc, groups=["dino"], **kw)
    other = svgfeat.create_model("test_tiny_dino")
    with pytest.raises(CacheError, match="encoder"):
        svgfeat.extract("sample:digits/val", tmp_path / "c", encoder=other, **kw)
    calls = []
    monkeypatch.setattr(type(enc), "forward", lambda *a, **k: calls.append(1))
    c = svgfeat.extract("sample:digits/val", tmp_path / "c", model="test_tiny", **kw)
    assert len(c) == 12 and calls == []


def test_views_are_deterministic(tmp_path):
    kw = dict(model="test_tiny", size=64, limit=6, views=3, shard_size=4, batch_size=6, progress=False)
    a = svgfeat.extract("sample:digits/val", tmp_path / "a", **kw)
    b = svgfeat.extract("sample:digits/val", tmp_path / "b", **kw)
    assert len(a) == 18 and list(a.view_ids[:3]) == [0, 1, 2] and list(a.sample_ids[:3]) == [0, 0, 0]
    assert np.array_equal(a.read("latent"), b.read("latent"))
    assert not np.array_equal(a.read("cls", 0), a.read("cls", 1))
