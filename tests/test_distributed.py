"""svgfeat.distributed: torchrun rank -> device binding, backend choice, collectives, teardown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svgfeat import distributed as D
from svgfeat.errors import ConfigError

HERE = Path(__file__).resolve().parent


def test_env_ranks_reads_torchrun_variables():
    assert D.env_ranks({}) == (0, 1, 0)
    assert D.env_ranks({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (5, 8, 1)
    with pytest.raises(ConfigError, match="RANK=9, WORLD_SIZE=8"):
        D.env_ranks({"RANK": "9", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    with pytest.raises(ConfigError, match="LOCAL_RANK='x'"):
        D.env_ranks({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"})


def test_device_for_binds_local_rank():
    # 2 nodes x 4 GPUs: global rank 6 is local rank 2 on its node
    assert D.device_for("cuda", 2, 8, visible=4) == torch.device("cuda", 2)
    assert [D.device_for("cuda", r, 4, visible=4).index for r in range(4)] == [0, 1, 2, 3]
    assert D.device_for("cuda", 3, 4, visible=1) == torch.device("cuda", 0)  # per-rank CUDA_VISIBLE_DEVICES
    assert D.device_for("cuda:0", 0, 1) == torch.device("cuda", 0)  # single process: as given
    assert D.device_for("cuda:1", 0, 1) == torch.device("cuda", 1)
    assert D.device_for("cpu", 3, 4) == torch.device("cpu")
    with pytest.raises(ConfigError, match="must use cuda:2"):
        D.device_for("cuda:0", 2, 4, visible=4)  # every rank on cuda:0 is the bug this prevents
    with pytest.raises(ConfigError, match="LOCAL_RANK 4 has no GPU"):
        D.device_for("cuda", 4, 8, visible=4)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(D.BACKEND_ENV, raising=False)
    assert D.backend_for("cuda:1") == "nccl" and D.backend_for("cpu") == "gloo"
    monkeypatch.setenv(D.BACKEND_ENV, "gloo")
    assert D.backend_for("cuda:1") == "gloo"


def test_single_process_is_a_no_op(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info, dev = D.setup("cpu")
    assert (info.rank, info.world, info.distributed, dev) == (0, 1, False, torch.device("cpu"))
    t = torch.ones(3)
    assert D.all_reduce_sum(t, info) is t and D.broadcast_object(7, info) == 7
    D.barrier(info)
    D.teardown(info)


def _torchrun(device: str, port: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != D.BACKEND_ENV}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), str(HERE / "_dist_worker.py"), device], capture_output=True, text=True,
                       env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_torchrun_gloo_binds_each_rank():
    rows = _torchrun("cpu", 29541)
    assert [r["rank"] for r in rows] == [0, 1] and [r["local_rank"] for r in rows] == [0, 1]
    assert all(r["device"] == "cpu" and r["backend"] == "gloo" for r in rows)
    assert [r["cuda_would_be"] for r in rows] == ["cuda:0", "cuda:1"]  # its own GPU index per rank
    assert all(r["sum"] == 3.0 and r["bcast"] == 0 for r in rows)
    assert all(r["avg_grad"] == [1.5, 3.0] for r in rows)  # mean over ranks of [r+1, 2(r+1)]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_torchrun_nccl_binds_each_rank_to_its_gpu():
    rows = _torchrun("cuda", 29542)
    assert [r["device"] for r in rows] == ["cuda:0", "cuda:1"]
    assert all(r["backend"] == "nccl" and r["sum"] == 3.0 for r in rows)


def test_seg_train_runs_data_parallel_under_torchrun(tmp_path):
    """`seg train` under 2 gloo ranks: each rank trains on its slice of every global batch (gradients averaged:
    see `avg_grad` in test_torchrun_gloo_binds_each_rank), rank 0 alone writes the head and metrics. Compared
    with one process in tests/test_dense_heads.py (global BatchNorm statistics and loss)."""
    from safetensors.torch import load_file

    env = {k: v for k, v in os.environ.items() if k != D.BACKEND_ENV}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "two"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29543", "-m", "svgfeat", "seg", "train", "--data", "sample:digitseg", "--model", "test_tiny",
                          "--group", "dino", "--iters", "4", "--batch-size", "4", "--no-eval", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 only
    head = load_file(out / "head.safetensors")
    assert all(torch.isfinite(v).all() for v in head.values())
    assert json.loads((out / "metrics.json").read_text())["train"]["iters"] == 4
