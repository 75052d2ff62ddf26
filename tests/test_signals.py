"""SIGTERM / SIGINT during `extract --workers 2`: the decoding workers stop with it (no orphan), the lock is
released (its file deleted), the finished shards stay, and the rerun completes the cache to exactly the
rows of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import svgfeat
from svgfeat.cache.lock import is_locked

ARGS = ["sample:digits/train", "--model", "test_tiny", "--size", "96", "--shard-size", "32", "--batch-size", "16",
        "--groups", "latent,cls"]


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "c"
    svgfeat.extract("sample:digits/train", out, model="test_tiny", size=96, shard_size=32, batch_size=16,
                    groups=["latent", "cls"], progress=False)
    return svgfeat.open_cache(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_workers_releases_the_lock_and_the_rerun_completes(tmp_path, reference, sig):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "svgfeat", "extract", *ARGS, "-o", str(out), "--workers", "2"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "shard-00001.json").exists():  # two shards written: the workers are busy
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no shard written within 240 s"
            time.sleep(0.05)
        workers = children(p.pid)
        assert len(workers) >= 2, workers  # the decoding workers (and maybe a resource tracker)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    assert p.returncode != 0 and "Traceback" not in err, err
    deadline = time.monotonic() + 1  # stopped and reaped before the exit (torch's own watchdog takes ~5 s)
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)], "orphaned worker processes"
    assert not is_locked(out) and not (out / ".svgfeat.lock").exists()
    assert not [n for n in os.listdir(out) if ".tmp" in n]
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is False  # interrupted before the end
    done = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    assert 2 <= len(done) < m["num_shards"]

    r = subprocess.run([*cmd[:-2], "--workers", "0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    got = svgfeat.open_cache(out)
    assert len(got) == len(reference) and got.paths == reference.paths
    for g in ("latent", "cls"):
        assert np.array_equal(np.asarray(got.read(g)), np.asarray(reference.read(g))), g
