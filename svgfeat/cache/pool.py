"""Bounded open shard files: :class:`ShardPool` keeps at most ``capacity`` handles (LRU), closing evicted
ones, so reading a cache of any number of shards needs a fixed number of file descriptors.

A :class:`ShardHandle` holds ONE file descriptor and no memory map: rows are read with ``pread``
straight into the caller's array (one copy, no page-cache pages left mapped into the process). The first
read of a group in a process checks that group's fast hash (:mod:`.fasthash`): while reading when the
read covers the whole group, else in one pass before it; caches without fast hashes are checked with
their sha256 once per shard.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections import OrderedDict

import numpy as np

from ..errors import CacheError
from . import fasthash
from .integrity import ShardInfo
from .paths import open_regular
from .stformat import ST_DTYPES

CHUNK_BYTES = 32 << 20  # largest temporary buffer a read allocates (dtype conversion, sparse rows)


def default_capacity() -> int:
    """64 handles, fewer when the open-file limit is small (a quarter of the soft limit, at least 4)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 64
    return max(4, min(64, soft // 4))


def _pread_into(fd: int, buf: np.ndarray, offset: int, where: str) -> None:
    mv = memoryview(buf.reshape(-1).view(np.uint8)) if buf.size else memoryview(b"")
    done = 0
    while done < len(mv):
        n = os.preadv(fd, [mv[done:]], offset + done)
        if n <= 0:
            raise CacheError(f"{where}: unexpected end of file (truncated while in use?)")
        done += n


class ShardHandle:
    """An open, checked shard: ``read_into(group, start, stop, out)`` and ``take(group, rows)``."""

    def __init__(self, info: ShardInfo, verify: bool = True):
        self.info = info
        self.name = info.path.name
        self.users = 0
        self.verify = verify and (info.fast is not None or info.sha256 is not None)
        self._memo: dict = {}  # group -> (flags, expected hashes)
        self.fd = open_regular(info.path, "shard")
        if os.fstat(self.fd).st_size != info.size:
            os.close(self.fd)
            raise CacheError(f"{self.name} changed size since the cache was opened")

    # ---------------------------------------------------------------- integrity (first read per process)
    def _flags(self, group: str):
        """(flags, expected block hexes) of ``group``; the legacy sha256 check counts as one block."""
        if group not in self._memo:
            fast = self.info.fast
            if fast is not None:
                want = fast["groups"][group]
                f = fasthash.flags(self.fd, self.info.path, f"group:{group}", want, len(want) // fasthash.HEX_LEN)
            else:
                want = self.info.sha256
                f = fasthash.flags(self.fd, self.info.path, "file:sha256", want, 1)
            self._memo[group] = (f, want)
        return self._memo[group]

    def _mismatch(self, what: str) -> CacheError:
        root = self.info.path.parent
        return CacheError(f"{self.name}: {what} checksum mismatch (changed or corrupt since it was written); "
                          f"the cache {root} is damaged (run `svgfeat cache verify {root}`)")

    def ensure(self, group: str, lo: int = 0, hi: int | None = None) -> None:
        """Check the blocks of ``group`` holding its data bytes [lo, hi) against the recorded hashes, except
        those this process already checked (caches without fast hashes: the whole file's sha256, once)."""
        if not self.verify:
            return
        done, want = self._flags(group)
        if self.info.fast is None:
            if not done[0]:
                if fasthash.fd_sha256(self.fd, self.info.size) != want:
                    raise self._mismatch("file")
                done[0] = 1
            return
        t, block = self.info.tensors[group], self.info.fast["block"]
        n = t["end"] - t["begin"]
        hi = n if hi is None else min(hi, n)
        base = self.info.data_start + t["begin"]
        for k in range(lo // block, -(-hi // block)):
            if done[k]:
                continue
            a, b = k * block, min(n, (k + 1) * block)
            got = fasthash.fd_range(self.fd, base + a, base + b, fasthash.BlockHasher(block)).hexdigests()
            if got != want[k * fasthash.HEX_LEN:(k + 1) * fasthash.HEX_LEN]:
                raise self._mismatch(f"group {group!r} data (bytes {a}-{b})")
            done[k] = 1

    def _inline(self, group: str, start: int, stop: int):
        """A BlockHasher when this read covers the whole of a group not yet checked (hash while reading)."""
        if not self.verify or self.info.fast is None:
            return None
        t = self.info.tensors[group]
        if start != 0 or stop != (t["shape"][0] if t["shape"] else 0):
            return None
        done, _ = self._flags(group)
        return None if all(done) else fasthash.BlockHasher(self.info.fast["block"])

    def _settle(self, group: str, h) -> None:
        done, want = self._flags(group)
        got = h.hexdigests()
        if got != want:
            k = next((i for i in range(len(want) // fasthash.HEX_LEN)
                      if got[i * fasthash.HEX_LEN:(i + 1) * fasthash.HEX_LEN]
                      != want[i * fasthash.HEX_LEN:(i + 1) * fasthash.HEX_LEN]), 0)
            t, block = self.info.tensors[group], self.info.fast["block"]
            end = min(t["end"] - t["begin"], (k + 1) * block)
            raise self._mismatch(f"group {group!r} data (bytes {k * block}-{end})")
        done[:] = b"\x01" * len(done)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _layout(self, group):
        t = self.info.tensors[group]
        dt = np.dtype(ST_DTYPES[t["dtype"]][0])
        row_shape = tuple(t["shape"][1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dt.itemsize
        return t, dt, row_shape, row_bytes

    def read_into(self, group: str, start: int, stop: int, out: np.ndarray, check=None, verify: bool = True) -> None:
        """Rows [start, stop) of ``group`` into ``out`` [stop-start, ...] (any float dtype; bf16 widened).

        ``check(block, first_row)`` is called on the rows read (NaN/Inf), after the bytes' hash is checked.
        """
        t, dt, row_shape, row_bytes = self._layout(group)
        base = self.info.data_start + t["begin"]
        bf16 = t["dtype"] == "BF16"
        h = self._inline(group, start, stop) if verify else None  # hash while reading the whole group
        if verify and h is None:
            self.ensure(group, start * row_bytes, stop * row_bytes)  # the blocks touched, once per process
        if out.dtype == dt and not bf16 and out.flags.c_contiguous:
            _pread_into(self.fd, out, base + start * row_bytes, self.name)
            if h is not None:
                h.update(memoryview(out.reshape(-1).view(np.uint8)) if out.size else b"")
                self._settle(group, h)
            if check is not None:
                check(out, start)
            return
        step = max(1, CHUNK_BYTES // max(row_bytes, 1))
        for a in range(start, stop, step):
            b = min(stop, a + step)
            tmp = np.empty((b - a, *row_shape), dtype=dt)
            _pread_into(self.fd, tmp, base + a * row_bytes, self.name)
            if h is not None:
                h.update(memoryview(tmp.reshape(-1).view(np.uint8)) if tmp.size else b"")
            if bf16:
                tmp = (tmp.astype(np.uint32) << 16).view(np.float32)
            if check is not None and h is None:
                check(tmp, a)
            out[a - start:b - start] = tmp
        if h is not None:
            self._settle(group, h)
            if check is not None:
                check(out, start)

    def take(self, group: str, rows: np.ndarray, out: np.ndarray, check=None) -> None:
        """``out[k] = group[rows[k]]`` for sorted local ``rows``; dense selections read their span in chunks."""
        if len(rows) == 0:
            return
        t, dt, row_shape, row_bytes = self._layout(group)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 4 * len(rows):
            step = max(1, CHUNK_BYTES // max(row_bytes, 1))
            for a in range(lo, hi, step):
                b = min(hi, a + step)
                k0, k1 = np.searchsorted(rows, [a, b])
                if k1 > k0:
                    buf = np.empty((b - a, *row_shape), dtype=np.float32 if t["dtype"] == "BF16" else dt)
                    self.read_into(group, a, b, buf, check=None)
                    sub = buf[rows[k0:k1] - a]
                    if check is not None:
                        check(sub, rows[k0:k1])
                    out[k0:k1] = sub
            return
        # sparse: one pread per run of consecutive rows
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        for run in np.split(np.arange(len(rows)), breaks):
            a, b = int(rows[run[0]]), int(rows[run[-1]]) + 1
            buf = np.empty((b - a, *row_shape), dtype=np.float32 if t["dtype"] == "BF16" else dt)
            self.read_into(group, a, b, buf, check=None)
            if check is not None:
                check(buf, rows[run])
            out[run[0]:run[-1] + 1] = buf


class ShardPool:
    """LRU of open :class:`ShardHandle` s, at most ``capacity`` open at once (thread-safe)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = int(capacity) if capacity else default_capacity()
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._open: OrderedDict[int, ShardHandle] = OrderedDict()
        self._lock = threading.RLock()
        self.opened = 0  # handles opened over the pool's life (for tests and benchmarks)

    @contextlib.contextmanager
    def use(self, key: int, info: ShardInfo):
        """``with pool.use(s, info) as h``: the open handle of shard ``s``; a handle in use is never closed
        by another thread (eviction skips it; it closes when released if it was evicted meanwhile)."""
        with self._lock:
            h = self._open.get(key)
            if h is not None:
                self._open.move_to_end(key)
            else:
                self._evict(self.capacity - 1)
                h = ShardHandle(info)
                self.opened += 1
                self._open[key] = h
            h.users += 1
        try:
            yield h
        finally:
            with self._lock:
                h.users -= 1
                if h.users == 0 and self._open.get(key) is not h:
                    h.close()
                self._evict(self.capacity)

    def _evict(self, keep: int) -> None:
        for k in list(self._open):
            if len(self._open) <= keep:
                return
            if self._open[k].users == 0:
                self._open.pop(k).close()

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        with self._lock:
            for h in self._open.values():
                h.close()
            self._open.clear()
