"""The dense heads as one (issue P.1): same encoder rules, NotFittedError, each torchrun rank decodes only its
share of the batch, and `depth train` / `seg train` under 2 gloo ranks give the head one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from svgfeat import distributed as D
from svgfeat.heads.depth import LinearDepthHead
from svgfeat.heads.segmentation import LinearSegHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


@pytest.mark.parametrize("cls", [LinearSegHead, LinearDepthHead])
def test_unfitted_dense_heads_raise_not_fitted_error(cls, tiny):
    head = cls(tiny)
    for call in (lambda: head.predict(np.zeros((32, 32, 3), np.uint8)), lambda: head.save("x.safetensors"),
                 lambda: head.evaluate(torch.randn(1, 72, 2, 2), np.ones((1, 32, 32)))):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()


def test_t2i_p_latent_group_is_accepted_by_both_heads():
    """SVG-T2I-P has no residual channels: its 'latent' is the DINOv3 map, for segmentation and depth alike."""
    import svgfeat

    enc = svgfeat.create_model("test_tiny_t2i_p")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seg = LinearSegHead(enc, group="latent", max_iters=1, warmup_iters=0, batch_size=2, crop_size=32,
                        num_classes=3).fit([img, img], [np.zeros((32, 32), np.int64)] * 2)
    depth = LinearDepthHead(enc, group="latent", max_iters=1, warmup_iters=0, batch_size=2,
                            crop_size=(32, 32)).fit([img, img], [np.full((32, 32), 2.0, np.float32)] * 2)
    assert seg.in_channels_ == depth.in_channels_ == enc.latent_channels
    assert depth.predict([img])[0].shape == (32, 32) and seg.predict([img])[0].shape == (32, 32)


class _Counting:
    """A real depth dataset that records which items were decoded."""

    def __init__(self, ds):
        self.ds, self.loaded = ds, []
        self.eval_crop = None

    def __len__(self):
        return len(self.ds)

    def load_pair(self, i):
        self.loaded.append(int(i))
        return self.ds.load_pair(i)


def test_each_rank_decodes_only_its_share_of_the_global_batch():
    from svgfeat.data.depth import DepthTrainAugment, open_depth_dataset
    from svgfeat.heads._dense import _online_loader

    ds = open_depth_dataset("sample:depth/val").subset(range(10))
    aug = DepthTrainAugment((32, 32))
    one = _Counting(ds)
    full = [(x, d) for x, d in _online_loader(one, aug, 4, 3, seed=5, workers=0)]
    ranks = []
    for r in range(2):
        c = _Counting(ds)
        ranks.append(([(x, d) for x, d in _online_loader(c, aug, 4, 3, seed=5, workers=0, rank=r, world=2)], c))
    assert all(len(c.loaded) == 6 for _, c in ranks)  # 3 steps x 2 of the 4 images each, not 12
    assert sorted(ranks[0][1].loaded + ranks[1][1].loaded) == sorted(one.loaded)
    for it, (x, d) in enumerate(full):  # rank r holds items r::2 of every global batch, augmented identically
        for r, (batches, _) in enumerate(ranks):
            torch.testing.assert_close(batches[it][0], x[r::2], rtol=0, atol=0)
            torch.testing.assert_close(batches[it][1], d[r::2], rtol=0, atol=0)


# ------------------------------------------------------------------------------ torchrun == one process
def _run(args, port=None):
    env = {k: v for k, v in os.environ.items() if k != D.BACKEND_ENV}
    env["OMP_NUM_THREADS"] = "1"
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
              if port else [sys.executable]) + ["-m", "svgfeat"]
    r = subprocess.run(launch + args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _same_head(a, b, atol=1e-5):
    """Every tensor of the two heads (BatchNorm running statistics included) within ``atol``: both runs compute
    the global batch's BatchNorm statistics and loss, only the order of float sums differs (measured: <= 1.3e-6
    for depth's conv weights after 5 AdamW steps at lr 1e-2, 0 for the running statistics)."""
    from safetensors.torch import load_file

    ha, hb = load_file(a / "head.safetensors"), load_file(b / "head.safetensors")
    assert ha.keys() == hb.keys()
    diff = {k: float((ha[k].double() - hb[k].double()).abs().max()) for k in ha}
    assert max(diff.values()) <= atol, diff
    return diff


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_depth_train_under_torchrun_equals_one_process(tmp_path, mode):
    """2 gloo ranks, global batch 4 (2 per rank), 5 steps: the same head (BatchNorm statistics included) as one
    process on the same global batch, to float rounding; rank 0 alone writes."""
    args = ["depth", "train", "--data", "sample:depth", "--model", "test_tiny", "--group", "dino", "--iters", "5",
            "--batch-size", "4", "--warmup", "1", "--crop-size", "48,64", "--no-eval"]
    args += ["--cached", "--cache-dir", str(tmp_path / "cache")] if mode == "cached" else []
    if mode == "cached":  # one extraction shared by both runs
        _run(args + ["--iters", "1", "--out", str(tmp_path / "warm")])
    one = _run(args + ["--out", str(tmp_path / "one")])
    two = _run(args + ["--out", str(tmp_path / "two")], port=29561 if mode == "online" else 29562)
    assert two.stdout.count("wrote ") == one.stdout.count("wrote ") == 1  # rank 0 only
    _same_head(tmp_path / "one", tmp_path / "two")
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())["train"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["train"]
    assert m2["final_loss"] == pytest.approx(m1["final_loss"], rel=1e-5)
    assert m2["train_depth_mean"] == pytest.approx(m1["train_depth_mean"], rel=1e-6)


def test_seg_train_under_torchrun_equals_one_process(tmp_path):
    args = ["seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--group", "dino", "--iters", "4",
            "--batch-size", "4", "--warmup", "1", "--no-eval"]
    _run(args + ["--out", str(tmp_path / "one")])
    _run(args + ["--out", str(tmp_path / "two")], port=29563)
    _same_head(tmp_path / "one", tmp_path / "two")


def test_dataset_evaluation_shows_progress_but_no_one_step_bar(tiny, capsys):
    from svgfeat.data.depth import open_depth_dataset

    head = LinearDepthHead(tiny, max_iters=1, warmup_iters=0).fit(torch.randn(2, 72, 2, 2), np.ones((2, 8, 8)))
    val = open_depth_dataset("sample:depth/val")
    head.evaluate(val.subset(range(3)), progress_bar=True)
    err = capsys.readouterr().err
    assert "evaluating LinearDepthHead" in err and "| 0/3 [" in err  # a bar over the 3 images
    head.evaluate(val.subset(range(1)), progress_bar=True)
    assert capsys.readouterr().err == ""  # no `1/1` bar
    head.evaluate(val.subset(range(3)), progress_bar=False)
    assert capsys.readouterr().err == ""
