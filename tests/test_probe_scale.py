"""The probe at ImageNet size (issue R points 1-2): one copy of the data, results unchanged, and the
device-resident trainer (run here on the CPU) agreeing with the host path."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from svgfeat.errors import ConfigError
from svgfeat.heads import _grid
from svgfeat.heads._resident import batch_plan, resident_matrix, train_grid_resident
from svgfeat.heads.probe import LinearProbe, heldout_split


def clusters(n=3000, d=48, k=10, seed=1, shift=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    C = rng.standard_normal((k, d)).astype(np.float32)
    X = (C[y] + 2 * rng.standard_normal((n, d)).astype(np.float32) + shift).astype(np.float32)
    return X, y


@pytest.mark.parametrize("batch,d,k", [(256, 48, 10), (1024, 128, 100)])  # per-head path / one-GEMM path
def test_fit_is_bit_identical_to_the_copying_path(batch, d, k):
    """The streamed z-score and the held-out evaluation by index give exactly what the former code gave: it
    z-scored a float64 copy of X[train_rows] and evaluated a copy of X[heldout_rows]. That path is rebuilt here
    from the trainer's parts and compared bit for bit."""
    X, y = clusters(n=4000, d=d, k=k)
    p = LinearProbe(iterations=30, batch_size=batch, lrs=(1e-3, 1e-2, 1e-1)).fit(X, y)
    tr, ho = heldout_split(np.arange(len(y)), y, 0.1, 0)
    sub = torch.from_numpy(X)[torch.from_numpy(tr)].double()  # the former FeatureNorm.zscore
    mean, scale = sub.mean(0).float(), sub.std(0, unbiased=False).clamp_min(1e-6).float()
    assert torch.equal(p.mean_, mean) and torch.equal(p.scale_, scale)
    norm = _grid.FeatureNorm("zscore", d, "cpu", mean, scale)
    order = _grid.BatchOrder(tr, np.arange(len(y)), np.zeros(len(y), np.int64), 0)
    cfg = _grid.GridConfig(lrs=tuple(lr * batch / 256 for lr in (1e-3, 1e-2, 1e-1)), wds=(0.0,) * 3, steps=30,
                           batch_size=batch)
    ref = _grid.train_grid(torch.from_numpy(X), torch.from_numpy(y), order, k, cfg, norm)
    assert torch.equal(p.W_, ref.W.contiguous()) and torch.equal(p.b_, ref.b.contiguous())
    Xh, yh = torch.from_numpy(X[ho]), torch.from_numpy(y[ho])  # the former copy of the held-out rows
    t1, t5 = _grid.evaluate_grid(ref.W, ref.b, Xh, yh, norm)
    assert [h["heldout_top1"] for h in p.heads_] == t1.tolist()
    assert [h["heldout_top5"] for h in p.heads_] == t5.tolist()


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np
    from svgfeat.heads.probe import LinearProbe
    def status(key):
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    rng = np.random.default_rng(0)
    X = rng.standard_normal((240_000, 256), dtype=np.float32)
    y = rng.integers(0, 10, len(X))
    LinearProbe(iterations=2, lrs=(0.1,), batch_size=256).fit(X[:2000], y[:2000])  # warm up the code paths
    before = status("VmRSS:")
    LinearProbe(iterations=3, lrs=(0.1,), batch_size=256).fit(X, y)
    print(json.dumps({"data": X.nbytes, "extra": status("VmHWM:") - before}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for the peak RSS")
def test_fit_holds_one_copy_of_the_data():
    """A fresh process's peak RSS grows by well under one copy of X during fit (the former code grew by
    ~2.7 copies: X[train_rows] and its float64 version)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True, env=env)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # the old code grew by ~2.7 copies; below one copy leaves room for library pages the kernel reclaimed under
    # memory pressure and faults back in during fit (seen once at 0.6 on a loaded CI machine)
    assert r["extra"] < 1.0 * r["data"], r


def test_resident_float32_agrees_with_the_host_path():
    X, y = clusters(n=3000, d=32, k=6)
    kw = dict(iterations=150, lrs=(1e-3, 1e-2, 1e-1), batch_size=256)
    host = LinearProbe(**kw).fit(X, y)
    res = LinearProbe(resident_dtype="float32", **kw).fit(X, y)
    np.testing.assert_allclose(res.W_.numpy(), host.W_.numpy(), rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(res.b_.numpy(), host.b_.numpy(), rtol=1e-3, atol=2e-5)
    assert [h["heldout_top1"] for h in res.heads_] == pytest.approx([h["heldout_top1"] for h in host.heads_],
                                                                    abs=0.5)
    assert res.best_index_ == host.best_index_


@pytest.mark.parametrize("optimizer,wd", [("sgd", 1e-3), ("adamw", 1e-2)])
def test_resident_update_rules_match_the_host_grid(optimizer, wd):
    """Weight decay and AdamW on the resident trainer equal the host GEMM grid (float rounding)."""
    X, y = clusters(n=1500, d=24, k=5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    cfg = _grid.GridConfig(lrs=(1e-3, 5e-2), wds=(wd, wd), optimizer=optimizer, steps=60, batch_size=128)
    order = lambda: _grid.BatchOrder(np.arange(len(y)), np.arange(len(y)), np.zeros(len(y), np.int64), 3)  # noqa: E731
    host = _grid.train_grid(Xt, yt, order(), 5, cfg)
    W, b = train_grid_resident(resident_matrix(X, "cpu", torch.float32), yt, order(), 5, cfg).weights()
    np.testing.assert_allclose(W.numpy(), host.W.contiguous().numpy(), rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(b.numpy(), host.b.contiguous().numpy(), rtol=1e-3, atol=2e-5)


def test_resident_bfloat16_learns_like_float32():
    X, y = clusters(n=3000, d=32, k=6)
    kw = dict(iterations=150, lrs=(1e-2, 1e-1), batch_size=256)
    f32 = LinearProbe(**kw).fit(X, y)
    bf16 = LinearProbe(resident_dtype="bfloat16", **kw).fit(X, y)
    assert abs(bf16.score(X, y) - f32.score(X, y)) < 0.02
    assert (bf16.predict(X) == f32.predict(X)).mean() > 0.95


def test_resident_matrix_and_batch_plan():
    X, y = clusters(n=1000, d=8, k=3)
    mean, scale = torch.from_numpy(X.mean(0)), torch.from_numpy(X.std(0))
    R = resident_matrix(X, "cpu", torch.bfloat16, mean, scale, block=300)
    assert R.dtype == torch.bfloat16 and R.shape == X.shape
    np.testing.assert_allclose(R.float().numpy(), (X - X.mean(0)) / X.std(0), atol=2e-2)
    order = _grid.BatchOrder(np.arange(1000), np.arange(1000), np.zeros(1000, np.int64), 0)
    flat, bounds = batch_plan(order, 7, 300, "cpu")
    ref = list(_grid.BatchOrder(np.arange(1000), np.arange(1000), np.zeros(1000, np.int64), 0).batches(7, 300))
    assert len(bounds) == 8 and [bounds[s + 1] - bounds[s] for s in range(7)] == [len(r) for r in ref]
    np.testing.assert_array_equal(flat.numpy(), np.concatenate(ref))
    with pytest.raises(ConfigError, match="resident_dtype"):
        LinearProbe(resident_dtype="int8").fit(X, y)
    with pytest.raises(ConfigError, match="batchnorm"):
        LinearProbe(resident_dtype="bfloat16", normalize="batchnorm").fit(X, y)
