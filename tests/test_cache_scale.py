"""Issue J point 4/5: a cache of any number of shards reads with bounded open files and memory;
``from_arrays`` writes the real format (every head and ``cache verify`` accept it)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import svgfeat
from svgfeat.errors import CacheError, ConfigError

_ULIMIT = r"""
import os, resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
import svgfeat
from svgfeat.cache import verify_cache

n, shard = 3000, 2   # 1,500 shards: the landed main needed one open file per (shard, group) = 3,000
rng = np.random.default_rng(0)
cls, pooled = rng.standard_normal((n, 16), dtype=np.float32), rng.standard_normal((n, 8), dtype=np.float32)
c = svgfeat.from_arrays(sys.argv[1], {"cls": cls, "pooled": pooled}, labels=np.arange(n) % 10,
                        classes=[str(i) for i in range(10)], shard_size=shard, durable=False)
c = svgfeat.open_cache(sys.argv[1])
assert len(c.manifest["shards"]) == 1500
assert np.array_equal(c.read("cls"), cls) and np.array_equal(c.read("pooled"), pooled)
rows = rng.permutation(n)[:700]
assert np.array_equal(c.read("pooled", rows), pooled[rows])
got = np.concatenate([b["cls"] for _, b in c.iter_batches(["cls", "pooled"], batch_size=257)])
assert np.array_equal(got, cls)
assert np.array_equal(c.to("cpu", ["cls"])["cls"].numpy(), cls)
assert verify_cache(sys.argv[1]) == []
fds = len(os.listdir("/proc/self/fd"))
print(json.dumps({"open_handles": len(c._pool), "capacity": c._pool.capacity, "opened": c._pool.opened,
                  "fds_now": fds}))
""".replace("import os,", "import json, os,")


def test_1500_shards_read_under_ulimit_256(tmp_path):
    r = subprocess.run([sys.executable, "-c", _ULIMIT, str(tmp_path / "c")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["capacity"] <= 64 and info["open_handles"] <= info["capacity"]
    assert info["opened"] > 1500  # handles were evicted and reopened, never all held at once
    assert info["fds_now"] < 256


_PEAK = r"""
import json, sys
import numpy as np, torch
import svgfeat

c = svgfeat.open_cache(sys.argv[1])
c.read("x", slice(0, 2)); c.to("cpu", ["x"], dtype=torch.float16); c.release()
def rss():  # VmHWM: this process's own peak (ru_maxrss would carry pytest's peak across fork+exec)
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
base = rss()
a = c.read("x")                           # float32 [N, 1024], one preallocated array
after_read = rss() - base
del a
t = c.to("cpu", ["x"])["x"]                # streamed into one preallocated tensor
after_to = rss() - base
h = c.read("x", dtype=np.float16)          # converted while streaming
print(json.dumps({"bytes": c.read("x", 0).nbytes * len(c), "read": after_read, "to": after_to,
                  "fp16_ok": bool(h.dtype == np.float16)}))
"""


def test_streaming_reads_peak_memory(tmp_path):
    n, d = 24576, 1024  # 96 MiB of float32 in 96 shards
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for i in range(0, n, 4096):
        x[i:i + 4096] = np.random.default_rng(i).standard_normal((min(4096, n - i), d), dtype=np.float32)
    x.flush()
    svgfeat.from_arrays(tmp_path / "c", {"x": np.load(tmp_path / "x.npy", mmap_mode="r")}, shard_size=256,
                        durable=False)
    del x
    r = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "c")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    # one copy of the data plus a bounded working set (the landed main mapped every shard and concatenated)
    assert m["read"] < 1.2 * m["bytes"] + (48 << 20), m
    assert m["to"] < 1.2 * m["bytes"] + (48 << 20), m
    assert m["fp16_ok"]


def test_memory_budget_refuses_up_front(tmp_path):
    c = svgfeat.from_arrays(tmp_path / "c", {"x": np.ones((100, 64), np.float32)}, shard_size=30)
    with pytest.raises(CacheError, match=r"reading 100 rows of group 'x' as float32 needs .* memory budget.*dtype=float16"):
        c.read("x", memory_budget=1000)
    assert c.read("x", memory_budget=100 * 64 * 4).shape == (100, 64)
    assert c.read("x", dtype=np.float16, memory_budget=100 * 64 * 2).dtype == np.float16
    c2 = svgfeat.open_cache(tmp_path / "c", memory_budget="20K")
    with pytest.raises(CacheError, match="memory budget of 0.00 GB"):
        c2.to("cpu", ["x"])
    assert c2.read("x", slice(0, 10)).shape == (10, 64)


def test_from_arrays_round_trip_and_format(tmp_path):
    rng = np.random.default_rng(1)
    cls = rng.standard_normal((50, 12), dtype=np.float32)
    lat = torch.randn(50, 4, 2, 2, dtype=torch.bfloat16)
    half = rng.standard_normal((50, 3)).astype(np.float64)
    c = svgfeat.from_arrays(tmp_path / "c", {"cls": cls, "latent": lat, "h": half}, labels=np.arange(50) % 5,
                            classes=list("abcde"), paths=[f"img/{i}.jpg" for i in range(50)], shard_size=16,
                            encoder={"model": "my-clip"}, transform={"size": 224})
    assert isinstance(c, svgfeat.FeatureCache) and len(c) == 50 and len(c.manifest["shards"]) == 4
    assert c.groups == {"cls": {"shape": [12], "dtype": "float32"}, "latent": {"shape": [4, 2, 2], "dtype": "bfloat16"},
                        "h": {"shape": [3], "dtype": "float32"}}
    assert np.array_equal(c.read("cls"), cls)
    assert torch.equal(torch.from_numpy(c.read("latent")), lat.float())
    assert np.allclose(c.read("h"), half, atol=1e-6)
    assert c.classes == list("abcde") and c.labels.tolist() == [i % 5 for i in range(50)]
    assert c.paths[7] == "img/7.jpg" and c.encoder_spec["model"] == "my-clip" and c.encoder_spec["external"]
    assert c.transform["size"] == 224 and c.manifest["complete"] and c.num_views == 1
    assert svgfeat.cache.verify_cache(c.root) == []
    # the shards are real safetensors files
    from safetensors.torch import load_file

    shard = load_file(str(c.root / "shard-00001.safetensors"))
    assert np.array_equal(shard["cls"].numpy(), cls[16:32]) and torch.equal(shard["latent"], lat[16:32])
    idx = json.loads((c.root / "shard-00003.json").read_text())
    assert idx["rows"] == 2 and idx["paths"] == ["img/48.jpg", "img/49.jpg"]
    # heads accept it: kNN against itself finds each row
    from svgfeat.heads.knn import KNNClassifier

    knn = KNNClassifier(k=1).fit(c.read("cls"), c.labels)
    assert (knn.predict(cls) == c.labels).all()


def test_from_arrays_validates_inputs(tmp_path):
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ConfigError, match="has 3 rows, expected 4"):
        svgfeat.from_arrays(tmp_path / "a", {"x": x, "y": np.zeros((3, 2), np.float32)})
    with pytest.raises(ConfigError, match="dtype int64"):
        svgfeat.from_arrays(tmp_path / "a", {"x": np.zeros((4, 2), np.int64)})
    with pytest.raises(ConfigError, match="labels must be 4 integers"):
        svgfeat.from_arrays(tmp_path / "a", {"x": x}, labels=[1, 2])
    with pytest.raises(ConfigError, match=r"labels must lie in \[-1, 1\]"):
        svgfeat.from_arrays(tmp_path / "a", {"x": x}, labels=[0, 1, 2, 0], classes=["a", "b"])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ConfigError, match=r"groups\['x'\] row 2 holds non-finite"):
        svgfeat.from_arrays(tmp_path / "a", {"x": bad})
    with pytest.raises(ConfigError, match="shard_size"):
        svgfeat.from_arrays(tmp_path / "a", {"x": x}, shard_size=0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "shard-00000.safetensors").write_bytes(b"mine")
    with pytest.raises(CacheError, match="no svgfeat manifest; refusing"):
        svgfeat.from_arrays(tmp_path / "b", {"x": x})
    assert (tmp_path / "b" / "shard-00000.safetensors").read_bytes() == b"mine"


def test_overwrite_replaces_a_cache_and_keeps_user_files(tmp_path):
    out = tmp_path / "c"
    svgfeat.from_arrays(out, {"x": np.ones((10, 2), np.float32)}, shard_size=3)
    (out / "README.txt").write_text("mine")
    with pytest.raises(CacheError, match="overwrite=True"):
        svgfeat.from_arrays(out, {"x": np.zeros((2, 2), np.float32)})
    c = svgfeat.from_arrays(out, {"x": np.zeros((2, 2), np.float32)}, overwrite=True)
    assert len(c) == 2 and sorted(p.name for p in out.iterdir()) == [
        "README.txt", "manifest.json", "shard-00000.json", "shard-00000.safetensors"]


def test_device_views_release(tmp_path):
    from svgfeat.cache.reader import _DEVICE_VIEWS

    x = np.random.default_rng(0).standard_normal((40, 6), dtype=np.float32)
    svgfeat.from_arrays(tmp_path / "c", {"x": x}, shard_size=7)
    with svgfeat.open_cache(tmp_path / "c") as c:
        t = c.to("cpu", "x")["x"]
        assert np.array_equal(t.numpy(), x) and t.dtype == torch.float32
        assert c.to("cpu", "x")["x"] is t
        b = c.to("cpu", "x", dtype=torch.bfloat16)["x"]
        assert torch.equal(b, torch.from_numpy(x).bfloat16())
        assert sum(k[0] == str(c.root) for k in _DEVICE_VIEWS) == 2 and len(c._pool) > 0
    assert not any(k[0] == str(c.root) for k in _DEVICE_VIEWS) and len(c._pool) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_view_on_cuda_streams_through_pinned_buffers(tmp_path):
    x = np.random.default_rng(0).standard_normal((3000, 33), dtype=np.float32)
    c = svgfeat.from_arrays(tmp_path / "c", {"x": x.astype(np.float16)}, shard_size=128)
    t = c.to("cuda", "x", dtype=torch.float32)["x"]
    assert t.is_cuda and t.dtype == torch.float32
    assert torch.equal(t.cpu(), torch.from_numpy(x.astype(np.float16)).float())
    c.release()


def test_pool_never_exceeds_capacity(tmp_path):
    x = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    svgfeat.from_arrays(tmp_path / "c", {"x": x}, shard_size=5)
    c = svgfeat.open_cache(tmp_path / "c", max_open=3)
    rows = np.random.default_rng(0).permutation(200)
    assert np.array_equal(c.read("x", rows), x[rows])
    assert np.array_equal(c.read("x", slice(7, 190, 3)), x[7:190:3])
    assert np.array_equal(c.read("x", [5, 5, 199, 0, 5]), x[[5, 5, 199, 0, 5]])
    assert c.read("x", -1).tolist() == x[-1].tolist()
    assert len(c._pool) <= 3 and c._pool.opened > 3


def test_cache_info_and_verify_cli_on_external_features(tmp_path, capsys):
    from svgfeat.cli import main

    svgfeat.from_arrays(tmp_path / "c", {"x": np.ones((5, 2), np.float32)}, encoder={"model": "my-clip"})
    for args in (["cache", "info", str(tmp_path / "c")], ["cache", "verify", str(tmp_path / "c")]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "my-clip" in out and "external features" in out and "OK" in out


def test_cache_pickles_without_its_open_files(tmp_path):
    import pickle

    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    c = svgfeat.from_arrays(tmp_path / "c", {"x": x}, shard_size=4)
    c.read("x")
    c2 = pickle.loads(pickle.dumps(c))
    assert len(c2._pool) == 0 and c2._pool.capacity == c._pool.capacity
    assert np.array_equal(c2.read("x", [9, 0]), x[[9, 0]])
