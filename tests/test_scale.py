"""Bounded files and memory whatever the shard count: knn, probe and `index build --auto` on a cache of 1,563
tiny shards (issue J's check, scaled down in rows) under `ulimit -n 256`, each in a child process whose peak RSS
is measured; plus benchmarks/scale_sim.py end to end on a toy size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_extra

ROOT = Path(__file__).resolve().parents[1]
SHARDS, PER_SHARD, D_HALF, CLASSES = 1563, 4, 384, 10
GB = 1 << 30


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    from svgfeat.cache import from_arrays

    d = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((CLASSES, 2 * D_HALF)).astype(np.float32)
    out = {}
    for name, n, shard in (("train", SHARDS * PER_SHARD, PER_SHARD), ("val", 500, 100)):
        y = np.sort(rng.integers(0, CLASSES, n))
        x = (centers[y] + 0.5 * rng.standard_normal((n, 2 * D_HALF))).astype(np.float16)
        c = from_arrays(d / name, {"cls": x[:, :D_HALF], "pooled": x[:, D_HALF:]}, labels=y,
                        classes=[f"c{i}" for i in range(CLASSES)], shard_size=shard)
        out[name] = c.root
    assert len(list(out["train"].glob("*.safetensors"))) == SHARDS
    return d, out


CHILD = r"""
import json, resource, sys


def peak_kb():  # this process's own high-water mark (VmHWM: reset at exec, unlike ru_maxrss after a fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
lim = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (lim, lim))
from svgfeat.cli import main

out = []
for args in json.loads(sys.argv[2]):
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    out.append({"rc": code, "maxrss_kb": peak_kb()})
print(json.dumps(out))
"""


def test_heads_work_under_ulimit_256_with_bounded_rss(caches):
    """knn, probe and index build --auto, one after another in one child process limited to 256 open files."""
    require_extra("faiss")  # index build --auto: the [faiss] extra (skipped locally without it, a failure under CI)
    d, c = caches
    n = SHARDS * PER_SHARD
    cmds = [["knn", "--train", c["train"], "--val", c["val"], "-k", "10,20", "-o", d / "knn.json"],
            ["probe", "--train", c["train"], "--val", c["val"], "--iterations", "20", "--lrs", "0.1",
             "-o", d / "probe.json"],
            ["index", "build", c["train"], "--auto", "-o", d / "idx.faiss"]]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", CHILD, "256", json.dumps([[str(a) for a in x] for x in cmds])],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [r["rc"] for r in res] == [0, 0, 0], p.stderr[-3000:]
    f32 = (n + 500) * 2 * D_HALF * 4  # the most float32 data one command reads (train + val, cls+pooled)
    assert res[-1]["maxrss_kb"] * 1024 <= 2 * f32 + 1.5 * GB, f"peak RSS {res[-1]['maxrss_kb'] / 2**20:.2f} GB"
    assert json.loads((d / "knn.json").read_text())["k"]["20"]["top1"] > 90  # right, not just produced
    side = json.loads((d / "idx.faiss.json").read_text())
    assert side["ntotal"] == n and side["factory"] == "Flat"
    assert json.loads((d / "probe.json").read_text())["best"]["top1"] > 50


def test_scale_sim_runs_end_to_end(tmp_path):
    """The benchmark itself on a toy size: each command succeeds within the RSS budget under ulimit -n 256."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_sim.py"), "--sizes", "300,1200",
                        "--val-rows", "100", "--latent-rows", "40", "--shard-size", "8", "--ulimit-nofile", "256",
                        "--dit-batch", "16", "--workdir", tmp_path / "w", "--only", "knn,dit-data",
                        "--json", out], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {(r["command"], r["n"]) for r in res} == {("knn", 300), ("knn", 1200), ("dit-data", 40)}
    assert all(r["within"] for r in res)
    assert "knn           N       300 ->      1200" in p.stdout and "per 4x N" in p.stdout
