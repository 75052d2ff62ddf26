"""Streaming DiT data: block-shuffled epochs cover every row once, are seeded, and the prefetcher is bounded."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
from _dit_helpers import MemCache, tiny_model

from svgfeat.errors import ConfigError
from svgfeat.generation.data import BlockOrder, PrefetchReader, block_order, shard_blocks
from svgfeat.generation.train import LatentBatcher, train_dit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_blocks_never_straddle_shards():
    b = shard_blocks(23, 4, [0, 10, 10, 23])  # an empty shard in the middle
    assert b.tolist() == [[0, 4], [4, 8], [8, 10], [10, 14], [14, 18], [18, 22], [22, 23]]
    with pytest.raises(ConfigError, match="block_rows"):
        shard_blocks(10, 0)
    with pytest.raises(ConfigError, match="do not cover"):
        shard_blocks(10, 4, [0, 5, 9])


def test_every_row_once_per_epoch_seeded_and_local():
    n, B = 1000, 64
    o = BlockOrder(n, B, seed=3, block_rows=16, window_blocks=4, shard_offsets=[0, 333, 1000])
    stream = np.concatenate([o.rows(s) for s in range(-(-3 * n // B))])
    for e in range(3):  # exact coverage, epochs straddled by batches included
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # a fresh order per epoch
    o2 = BlockOrder(n, B, seed=3, block_rows=16, window_blocks=4, shard_offsets=[0, 333, 1000])
    np.testing.assert_array_equal(o2.rows(40), o.rows(40))  # a pure function of (seed, step): resumable
    assert not np.array_equal(BlockOrder(n, B, seed=4, block_rows=16, window_blocks=4).rows(0), o.rows(0))
    # a window's rows come from window_blocks blocks: a batch touches few shard-contiguous regions
    ep = block_order(o.blocks, 3, 0, 4)
    blk = np.searchsorted(o.blocks[:, 0], ep, side="right") - 1
    for w in range(0, n - 64, 64):
        assert len(np.unique(blk[w:w + 64])) <= 8
    assert len(np.unique(np.searchsorted(o.blocks[:, 0], o.rows(0), side="right") - 1)) <= 8


class SlowCache(MemCache):
    """MemCache whose reads take a while and record how many run at once."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.active = self.peak = self.calls = 0
        self.lock = threading.Lock()

    def read(self, group, rows=None):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01)
        try:
            return super().read(group, rows)
        finally:
            with self.lock:
                self.active -= 1


def test_prefetch_equals_synchronous_reads_and_is_bounded():
    c = SlowCache(n=200)
    o = BlockOrder(len(c), 16, seed=0, block_rows=8, window_blocks=3)
    r = PrefetchReader(c, "latent", o.rows, depth=3, workers=2)
    for step in list(range(0, 20)) + [5, 6, 7, 30]:  # consecutive steps, then a restart (resume) and a jump
        got = r.get(step, 4, 12)
        want = c._lat[o.rows(step)[4:12]]
        np.testing.assert_array_equal(got, want)
    assert r.peak_queued <= 3 and c.peak <= 2  # bounded queue, bounded reader threads
    r.close()
    assert 24 <= c.calls <= 24 + 3 * 3  # every requested batch read once, plus at most a queue per restart
    with pytest.raises(ConfigError, match="depth"):
        PrefetchReader(c, "latent", o.rows, depth=0)


def _losses(out):
    return [json.loads(ln)["loss"] for ln in (out / "log.jsonl").read_text().splitlines()]


def test_streaming_training_learns_and_resumes_exactly(tmp_path):
    stream = {"preload_limit": 0, "block_rows": 4, "window_blocks": 3, "prefetch": 2, "workers": 2}
    d = LatentBatcher(MemCache(), 16, seed=0, stats=None, null_class=3, device="cpu", **stream)
    assert d.data is None and d.reader is not None  # the streaming path is taken
    tok, y = d.batch(0, 0, 16)
    assert tok.shape == (16, 16, 8) and y.shape == (16,)
    d.close()
    kw = dict(batch_size=8, lr=2e-3, ema_decay=0.8, log_every=1, ckpt_every=3, progress=False, hflip=True,
              data_options=stream)
    train_dit(MemCache(), tiny_model(), tmp_path / "a", steps=7, **kw)
    train_dit(MemCache(), tiny_model(), tmp_path / "b", steps=4, **kw)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "0000004")
    (tmp_path / "b" / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "dir": "0000003"}))
    train_dit(MemCache(), tiny_model(seed=99), tmp_path / "b", steps=7, **kw)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    r = train_dit(MemCache(), tiny_model(), tmp_path / "c", steps=90, batch_size=16, lr=2e-3, ema_decay=0.9,
                  log_every=30, ckpt_every=1000, progress=False, data_options=stream)
    losses = _losses(tmp_path / "c")
    assert losses[-1] < 0.8 * losses[0] and r["step"] == 90
