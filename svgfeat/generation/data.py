"""Streaming DiT training data for caches larger than RAM: block-shuffled order + a prefetching reader.

Order (a pure function of ``(seed, epoch)``): the rows are cut into blocks of at most ``block_rows`` contiguous
rows that never straddle a shard; each epoch permutes the blocks, groups them into windows of ``window_blocks``
blocks and shuffles the rows inside each window. Every row appears exactly once per epoch, and the rows of one
global batch lie in at most a window's worth of blocks, so reading a batch touches a few shard-contiguous
regions instead of ``B`` random rows across the whole cache (each row is still read once per epoch).

Reading: :class:`PrefetchReader` reads the batches of the next ``depth`` steps on ``workers`` background threads
(sorted row reads through ``cache.read``); at most ``depth`` batches are in flight or waiting (plus the one being
consumed), so memory is bounded by ``(depth + 1) x batch bytes`` whatever the cache size. Results are identical to synchronous reads.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ConfigError


def shard_blocks(n: int, block_rows: int, shard_offsets=None) -> np.ndarray:
    """Block boundaries int64 [nb, 2] (start, end): runs of <= ``block_rows`` rows inside one shard.

    ``shard_offsets``: cumulative shard starts [S+1] (``FeatureCache._offsets``); None treats the rows as one shard.
    """
    if block_rows < 1:
        raise ConfigError(f"block_rows must be >= 1, got {block_rows}")
    offs = np.asarray([0, n] if shard_offsets is None else shard_offsets, dtype=np.int64)
    if offs[0] != 0 or offs[-1] != n or np.any(np.diff(offs) < 0):
        raise ConfigError(f"shard offsets {offs[:4].tolist()}... do not cover 0..{n}")
    out = []
    for a, b in zip(offs[:-1], offs[1:]):
        starts = np.arange(a, b, block_rows, dtype=np.int64)
        out.append(np.stack([starts, np.minimum(starts + block_rows, b)], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def block_order(blocks: np.ndarray, seed: int, epoch: int, window_blocks: int) -> np.ndarray:
    """Row order int64 [n] of one epoch: blocks permuted, rows shuffled within windows of ``window_blocks``."""
    if window_blocks < 1:
        raise ConfigError(f"window_blocks must be >= 1, got {window_blocks}")
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    perm = rng.permutation(len(blocks))
    n = int((blocks[:, 1] - blocks[:, 0]).sum())
    out = np.empty(n, np.int64)
    pos = 0
    for w in range(0, len(perm), window_blocks):
        rows = np.concatenate([np.arange(*blocks[b]) for b in perm[w:w + window_blocks]])
        rng.shuffle(rows)
        out[pos:pos + len(rows)] = rows
        pos += len(rows)
    assert pos == n
    return out


class BlockOrder:
    """Global-batch rows per step over an endless sequence of block-shuffled epochs (see module docstring)."""

    def __init__(self, n: int, batch: int, seed: int, block_rows: int = 64, window_blocks: int = 32,
                 shard_offsets=None):
        if n < 1 or batch < 1:
            raise ConfigError(f"need n >= 1 rows and batch >= 1, got n={n}, batch={batch}")
        self.n, self.B, self.seed, self.window_blocks = n, batch, seed, window_blocks
        self.blocks = shard_blocks(n, block_rows, shard_offsets)
        self._cache: dict[int, np.ndarray] = {}  # at most two epochs (a batch can straddle two)
        self._lock = threading.Lock()

    def epoch(self, e: int) -> np.ndarray:
        with self._lock:
            if e not in self._cache:
                for old in [k for k in self._cache if k < e - 1 or k > e + 1]:
                    del self._cache[old]
                self._cache[e] = block_order(self.blocks, self.seed, e, self.window_blocks)
            return self._cache[e]

    def rows(self, step: int) -> np.ndarray:
        """Cache rows int64 [B] of the global batch of ``step`` (epoch e covers stream positions e*n..e*n+n-1)."""
        k = np.arange(step * self.B, (step + 1) * self.B, dtype=np.int64)
        ep, pos = k // self.n, k % self.n
        out = np.empty(self.B, np.int64)
        for e in np.unique(ep):
            m = ep == e
            out[m] = self.epoch(int(e))[pos[m]]
        return out


def read_rows(cache, group: str, rows: np.ndarray) -> np.ndarray:
    """``cache.read(group, rows)`` for any row order, reading sorted unique rows once (contiguous runs where
    possible) and scattering them back. Returns [len(rows), ...] as stored."""
    uniq, inv = np.unique(rows, return_inverse=True)
    return np.asarray(cache.read(group, uniq))[inv]


class PrefetchReader:
    """Reads ``rows_fn(step)[lo:hi]`` of ``group`` for the next ``depth`` steps on background threads.

    ``get(step, lo, hi)`` returns the numpy batch of that step (identical to a synchronous read); calls for
    consecutive steps are served from the queue, anything else (first call, resume, a different slice) restarts
    the queue at that step. At most ``depth`` batches are queued (in flight or waiting) besides the one returned.
    ``max_step``: no read is scheduled for steps >= max_step (the end of training).
    """

    def __init__(self, cache, group: str, rows_fn, depth: int = 4, workers: int = 2, max_step: int | None = None):
        if depth < 1 or workers < 1:
            raise ConfigError(f"prefetch depth and workers must be >= 1, got depth={depth}, workers={workers}")
        self.cache, self.group, self.rows_fn = cache, group, rows_fn
        self.depth, self.max_step = depth, max_step
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="svgfeat-prefetch")
        self._queue: deque = deque()  # (step, future)
        self._next = None  # next step to schedule
        self._slice = None
        self.peak_queued = 0  # the most batches held at once (for tests / diagnostics)

    def _read(self, step: int, lo: int, hi: int) -> np.ndarray:
        return read_rows(self.cache, self.group, self.rows_fn(step)[lo:hi])

    def _fill(self) -> None:
        lo, hi = self._slice
        while len(self._queue) < self.depth and (self.max_step is None or self._next < self.max_step):
            s = self._next
            self._queue.append((s, self._pool.submit(self._read, s, lo, hi)))
            self._next += 1
        self.peak_queued = max(self.peak_queued, len(self._queue))

    def get(self, step: int, lo: int, hi: int) -> np.ndarray:
        if self._slice != (lo, hi) or not self._queue or self._queue[0][0] != step:
            self._reset(step, (lo, hi))
        _, fut = self._queue.popleft()
        self._fill()  # schedule the next read before waiting for this one
        return fut.result()

    def _reset(self, step: int, sl) -> None:
        for _, f in self._queue:
            f.cancel()
        for _, f in self._queue:
            if not f.cancelled():
                f.exception()  # wait: never more than `depth` batches alive
        self._queue.clear()
        self._slice, self._next = sl, step
        self._fill()
        if not self._queue:  # asked for a step at/after max_step: read it anyway
            self._queue.append((step, self._pool.submit(self._read, step, *sl)))
            self._next = step + 1

    def close(self) -> None:
        for _, f in self._queue:
            f.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True)

    def __del__(self):
        try:
            self._pool.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
