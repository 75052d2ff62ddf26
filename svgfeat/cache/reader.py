"""Reading a feature cache: :func:`open_cache` -> :class:`FeatureCache`.

Opening validates the manifest schema, every shard index and every shard's size and safetensors header
against the manifest (cheap: no hashing; ``svgfeat cache verify`` hashes). Reads go through a bounded
pool of open shard files and stream into ONE preallocated array; every block is checked for NaN/Inf
(vectorised) and a damaged row is refused with its group and row named.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from ..errors import CacheError
from .integrity import check_shard, index_problems
from .manifest import read_manifest
from .memory import check_budget
from .paths import contained, read_json
from .pool import ShardPool

_DEVICE_VIEWS: dict[tuple, torch.Tensor] = {}
_DEVICE_LOCK = threading.Lock()
_NP = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


def first_nonfinite_row(block: np.ndarray, chunk_bytes: int = 8 << 20) -> int | None:
    """Index of the first row of ``block`` holding NaN/Inf, or None (vectorised, temporaries <= chunk_bytes)."""
    if block.dtype.kind != "f" or len(block) == 0:
        return None
    step = max(1, chunk_bytes // max(1, block[0].size))
    for i in range(0, len(block), step):
        sub = block[i:i + step]
        if not np.isfinite(sub).all():
            return i + int(np.argmax(~np.isfinite(sub.reshape(len(sub), -1)).all(axis=1)))
    return None


def clear_device_views() -> None:
    """Drop every device-resident copy held by the in-process registry."""
    with _DEVICE_LOCK:
        _DEVICE_VIEWS.clear()


def _damaged(root, msg):
    return CacheError(f"{msg}; the cache {root} is damaged (run `svgfeat cache verify {root}`)")


class FeatureCache:
    """A complete feature cache directory, opened read-only.

    Rows are in deterministic dataset order (views of one image are adjacent). ``read`` streams rows
    into one array, ``iter_batches`` yields bounded blocks, ``to(device, groups)`` gives device-resident
    tensors shared in-process (``release()`` or ``with open_cache(...) as c:`` frees them and the open
    files). At most ``max_open`` shard files are open at once.
    """

    def __init__(self, root, allow_incomplete: bool = False, max_open: int | None = None,
                 memory_budget=None, check_finite: bool = True):
        self.root = Path(root).resolve()
        self.manifest = read_manifest(self.root)
        if not self.manifest.get("complete") and not allow_incomplete:
            raise CacheError(f"{self.root} is incomplete (an extraction was interrupted); rerun the same "
                             "`svgfeat extract` command to finish it")
        self.memory_budget, self.check_finite = memory_budget, check_finite
        shards = self.manifest.get("shards") or []
        self._infos = []
        paths, labels, sample_ids, view_ids = [], [], [], []
        for s in shards:
            probs, idx = index_problems(self.root, s)
            if probs:
                raise _damaged(self.root, "; ".join(probs))
            self._infos.append(check_shard(self.root, dict(s, xxh3=idx.get("xxh3")), self.groups))
            paths += idx["paths"]
            labels += idx["labels"]
            sample_ids += idx["items"]
            view_ids += idx["views"]
        self._offsets = np.cumsum([0] + [s["rows"] for s in shards]).astype(np.int64)
        self.paths: list[str] = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.view_ids = np.asarray(view_ids, dtype=np.int64)
        self._pool = ShardPool(max_open)
        self._keys: set[tuple] = set()
        weakref.finalize(self, self._pool.close)

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, rows={len(self)}, groups={sorted(self.groups)})"

    @property
    def groups(self) -> dict:
        return self.manifest["groups"]

    @property
    def classes(self) -> list[str]:
        return self.manifest["dataset"].get("classes", [])

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [tuple(f) for f in self.manifest.get("failures", [])]

    @property
    def encoder_spec(self) -> dict:
        return self.manifest["encoder"]

    @property
    def transform(self) -> dict:
        return self.manifest["transform"]

    @property
    def num_views(self) -> int:
        return int(self.manifest.get("views", 1))

    def abspath(self, i: int) -> str:
        """Where row ``i`` came from: its dataset root joined with its recorded path (which must stay inside
        that root), ``sample:<id>`` for bundled samples, or the recorded name for external (from_arrays) rows."""
        root, rel = self.manifest["dataset"].get("root", ""), self.paths[i]
        if root == "sample:":
            return f"sample:{rel}"
        if not root:
            return rel
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise _damaged(self.root, f"row {i}: path {rel!r} leaves the dataset folder {root}")
        return str(Path(root) / rel)

    # ------------------------------------------------------------------ lifetime
    def release(self) -> None:
        """Drop this cache's device-resident tensors from the registry and close its open shard files."""
        with _DEVICE_LOCK:
            for k in self._keys:
                _DEVICE_VIEWS.pop(k, None)
            self._keys.clear()
        self._pool.close()

    def __getstate__(self):  # DataLoader workers / multiprocessing: open files and device views stay behind
        state = dict(self.__dict__)
        state["_pool"], state["_keys"] = self._pool.capacity, set()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pool = ShardPool(state["_pool"])
        weakref.finalize(self, self._pool.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    # ------------------------------------------------------------------ reading
    def _check_group(self, group: str) -> None:
        if group not in self.groups:
            raise CacheError(f"group {group!r} is not in cache {self.root} (it has: {', '.join(sorted(self.groups))})")

    def _rows(self, rows) -> np.ndarray:
        n = len(self)
        if rows is None:
            return np.arange(n)
        if isinstance(rows, slice):
            return np.arange(n)[rows]
        r = np.asarray(rows).reshape(-1) if not np.isscalar(rows) else np.asarray([rows])
        if r.dtype == bool or not (r.size == 0 or np.issubdtype(r.dtype, np.integer)):
            raise IndexError(f"rows must be integers, got dtype {r.dtype}")
        r = r.astype(np.int64)
        if r.size and (r.min() < -n or r.max() >= n):
            raise IndexError(f"row index out of range for a cache of {n} rows")
        return np.where(r < 0, r + n, r)

    def _out_dtype(self, group: str, dtype) -> np.dtype:
        if dtype is None:
            return np.dtype(np.float16 if self.groups[group]["dtype"] == "float16" else np.float32)
        dt = np.dtype(_NP.get(str(dtype).replace("torch.", ""), dtype))
        if dt.kind != "f":
            raise CacheError(f"dtype {dtype!r}: expected a float dtype (float16, float32, float64)")
        return dt

    def _checker(self, group: str, s: int, check: bool):
        if not check:
            return None
        name = self._infos[s].path.name

        def check_block(block, first):
            k = first_nonfinite_row(block)
            if k is not None:
                local = int(first[k]) if isinstance(first, np.ndarray) else int(first) + k
                raise _damaged(self.root, f"group {group!r} row {int(self._offsets[s]) + local} "
                                          f"({name} row {local}) holds non-finite values (NaN/Inf)")
        return check_block

    def read(self, group: str, rows=None, dtype=None, out: np.ndarray | None = None,
             check_finite: bool | None = None, memory_budget=None) -> np.ndarray:
        """Array [len(rows), *shape] of ``group``, streamed shard by shard into one preallocated array.

        ``rows``: None (all), an int (one row without the leading axis), a slice or an int array.
        ``dtype``: result dtype (default: fp16 as stored, fp32 otherwise; bf16 widened). ``out``: fill this
        array instead of allocating. A result larger than the memory budget is refused up front; a row
        holding NaN/Inf raises CacheError naming it (``check_finite=False`` skips the check).
        """
        self._check_group(group)
        scalar = rows is not None and np.isscalar(rows)
        shape = tuple(self.groups[group]["shape"])
        check = self.check_finite if check_finite is None else check_finite
        contiguous = rows is None or (isinstance(rows, slice) and rows.step in (None, 1))
        if contiguous:
            a, b, _ = (rows or slice(None)).indices(len(self))
            b = max(a, b)
            n = b - a
        else:
            r = self._rows(rows)
            n = len(r)
            if n > 1 and r[-1] - r[0] == n - 1 and bool(np.all(np.diff(r) == 1)):  # e.g. np.arange(a, b)
                contiguous, a, b = True, int(r[0]), int(r[-1]) + 1
        if out is None:
            dt = self._out_dtype(group, dtype)
            check_budget(n * int(np.prod(shape, dtype=np.int64)) * dt.itemsize,
                         f"reading {n} rows of group {group!r} as {dt}", memory_budget or self.memory_budget,
                         "read fewer rows (rows=...), iterate with iter_batches(), or use dtype=float16")
            out = np.empty((n, *shape), dtype=dt)
        elif out.shape != (n, *shape):
            raise CacheError(f"out has shape {out.shape}, expected {(n, *shape)}")
        if contiguous:
            self._read_range(group, a, b, out, check)
        elif n:
            self._read_rows(group, r, out, check)
        return out[0] if scalar else out

    def _read_range(self, group, a, b, out, check):
        s0 = int(np.searchsorted(self._offsets, a, side="right") - 1)
        pos = a
        for s in range(max(s0, 0), len(self._infos)):
            lo, hi = int(self._offsets[s]), int(self._offsets[s + 1])
            if lo >= b:
                break
            if hi <= pos:
                continue
            la, lb = pos - lo, min(b, hi) - lo
            with self._pool.use(s, self._infos[s]) as h:
                h.read_into(group, la, lb, out[pos - a:pos - a + lb - la], self._checker(group, s, check))
            pos = lo + lb

    def _read_rows(self, group, r, out, check):
        order = np.argsort(r, kind="stable")
        rs = r[order]
        cuts = np.searchsorted(rs, self._offsets)
        for s in range(len(self._infos)):
            k0, k1 = int(cuts[s]), int(cuts[s + 1])
            if k1 == k0:
                continue
            local = rs[k0:k1] - self._offsets[s]
            first = np.ones(len(local), dtype=bool)
            first[1:] = local[1:] != local[:-1]
            uniq = local[first]
            buf = np.empty((len(uniq), *out.shape[1:]), dtype=out.dtype)
            with self._pool.use(s, self._infos[s]) as h:
                h.take(group, uniq, buf, self._checker(group, s, check))
            out[order[k0:k1]] = buf[np.cumsum(first) - 1]

    def iter_batches(self, groups, batch_size: int = 4096, rows=None, dtype=None):
        """Yield (rows [b], {group: array [b, ...]}) in order; memory is bounded by ``batch_size``."""
        groups = [groups] if isinstance(groups, str) else list(groups)
        for g in groups:
            self._check_group(g)
        if rows is None:
            for i in range(0, len(self), batch_size):
                j = min(len(self), i + batch_size)
                yield np.arange(i, j), {g: self._read_kw(g, slice(i, j), dtype) for g in groups}
            return
        r = self._rows(rows)
        for i in range(0, len(r), batch_size):
            b = r[i:i + batch_size]
            yield b, {g: self._read_kw(g, b, dtype) for g in groups}

    def _read_kw(self, group, rows, dtype):
        return self.read(group, rows) if dtype is None else self.read(group, rows, dtype=dtype)

    def to(self, device="cpu", groups=("latent",), dtype=None) -> dict[str, torch.Tensor]:
        """Device-resident tensors {group: [n, ...]}; the same (cache, group, device, dtype) is shared in-process.

        Built by streaming shard blocks into one preallocated tensor (through pinned staging buffers on
        CUDA, so no whole-group CPU copy exists). ``release()`` / ``clear_device_views()`` free them.
        """
        from .device import stream_to_device

        groups = [groups] if isinstance(groups, str) else list(groups)
        device = torch.device(device)
        out = {}
        for g in groups:
            self._check_group(g)
            key = (str(self.root), self.manifest.get("created"), g, str(device), str(dtype))
            with _DEVICE_LOCK:
                t = _DEVICE_VIEWS.get(key)
                if t is None:
                    t = stream_to_device(self, g, device, dtype)
                    _DEVICE_VIEWS[key] = t
                self._keys.add(key)
            out[g] = t
        return out

    def latent_stats(self, group: str = "latent") -> dict | None:
        """Per-channel statistics written by ``svgfeat stats``: {"mean": [C], "std": [C]} or None."""
        p = self.root / "stats.json"
        if not p.exists():
            return None
        st = read_json(contained(self.root, "stats.json", "stats"), "stats")
        st = st.get(group) if isinstance(st, dict) else None
        if not isinstance(st, dict) or "mean" not in st or "std" not in st:
            return None
        return {"mean": np.asarray(st["mean"], dtype=np.float64), "std": np.asarray(st["std"], dtype=np.float64)}


def open_cache(path, allow_incomplete: bool = False, max_open: int | None = None, memory_budget=None,
               check_finite: bool = True) -> FeatureCache:
    """Open a complete feature cache directory (see :mod:`svgfeat.cache.manifest` for the layout).

    ``max_open``: most shard files open at once (default 64, less under a small ``ulimit -n``).
    ``memory_budget``: bytes a single whole-array read may allocate (default: available memory).
    """
    if isinstance(path, FeatureCache):
        return path
    p = Path(path)
    if not p.is_dir():
        raise CacheError(f"feature cache not found: {p} (create one with `svgfeat extract DATA -o {p}`)")
    return FeatureCache(p, allow_incomplete=allow_incomplete, max_open=max_open, memory_budget=memory_budget,
                        check_finite=check_finite)
