"""Reading a feature cache: :func:`open_cache` -> :class:`FeatureCache`."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import CacheError
from .manifest import read_manifest
from .shards import ShardReader

_DEVICE_VIEWS: dict[tuple, torch.Tensor] = {}
_DEVICE_LOCK = threading.Lock()


def clear_device_views() -> None:
    """Drop every device-resident copy held by the in-process registry."""
    with _DEVICE_LOCK:
        _DEVICE_VIEWS.clear()


class FeatureCache:
    """A complete feature cache directory, opened read-only.

    Rows are in deterministic dataset order (views of one image are adjacent). Groups are read lazily
    through memory maps; ``to(device, groups)`` gives device-resident tensors shared in-process.
    """

    def __init__(self, root, allow_incomplete: bool = False):
        self.root = Path(root).resolve()
        self.manifest = read_manifest(self.root)
        if not self.manifest.get("complete") and not allow_incomplete:
            raise CacheError(f"{self.root} is incomplete (an extraction was interrupted); rerun the same "
                             "`svgfeat extract` command to finish it")
        shards = self.manifest["shards"]
        self._readers: list[ShardReader | None] = [None] * len(shards)
        self._offsets = np.cumsum([0] + [s["rows"] for s in shards])
        paths, labels, sample_ids, view_ids = [], [], [], []
        for s in shards:
            idx = json.loads((self.root / s["index"]).read_text())
            paths += idx["paths"]
            labels += idx["labels"]
            sample_ids += idx["items"]
            view_ids += idx["views"]
        self.paths: list[str] = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.view_ids = np.asarray(view_ids, dtype=np.int64)
        assert len(self.paths) == self._offsets[-1], "index and shard row counts disagree"

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
        root = self.manifest["dataset"].get("root", "")
        return f"sample:{self.paths[i]}" if root == "sample:" else str(Path(root) / self.paths[i])

    # ------------------------------------------------------------------ reading
    def _reader(self, s: int) -> ShardReader:
        if self._readers[s] is None:
            self._readers[s] = ShardReader(self.root / self.manifest["shards"][s]["file"])
        return self._readers[s]

    def _check_group(self, group: str) -> None:
        if group not in self.groups:
            raise CacheError(f"group {group!r} is not in cache {self.root} (it has: {', '.join(sorted(self.groups))})")

    def _rows(self, rows) -> np.ndarray:
        n = len(self)
        if rows is None:
            return np.arange(n)
        if isinstance(rows, slice):
            return np.arange(n)[rows]
        r = np.asarray(rows, dtype=np.int64).reshape(-1) if not np.isscalar(rows) else np.asarray([int(rows)])
        if r.size and (r.min() < -n or r.max() >= n):
            raise IndexError(f"row index out of range for a cache of {n} rows")
        return np.where(r < 0, r + n, r)

    def read(self, group: str, rows=None) -> np.ndarray:
        """Array [len(rows), *shape] of ``group`` (fp16/fp32 as stored; bf16 widened to fp32).

        ``rows``: None (all), an int (returns one row without the leading axis), a slice or an int array.
        """
        self._check_group(group)
        scalar = rows is not None and np.isscalar(rows)
        r = self._rows(rows)
        shape = tuple(self.groups[group]["shape"])
        stored = self.groups[group]["dtype"]
        out_dtype = np.float16 if stored == "float16" else np.float32
        out = np.empty((len(r), *shape), dtype=out_dtype)
        if len(r):
            shard_of = np.searchsorted(self._offsets, r, side="right") - 1
            for s in np.unique(shard_of):
                sel = np.nonzero(shard_of == s)[0]
                local = r[sel] - self._offsets[s]
                if len(local) > 1 and np.all(np.diff(local) == 1):
                    out[sel] = self._reader(int(s)).read(group, slice(int(local[0]), int(local[-1]) + 1))
                else:
                    out[sel] = self._reader(int(s)).read(group, local)
        return out[0] if scalar else out

    def iter_batches(self, groups, batch_size: int = 4096, rows=None):
        """Yield (rows [b], {group: array [b, ...]}) in order, shard-aligned where possible."""
        groups = [groups] if isinstance(groups, str) else list(groups)
        for g in groups:
            self._check_group(g)
        r = self._rows(rows)
        for i in range(0, len(r), batch_size):
            b = r[i:i + batch_size]
            yield b, {g: self.read(g, b) for g in groups}

    def to(self, device="cpu", groups=("latent",), dtype=None) -> dict[str, torch.Tensor]:
        """Device-resident tensors {group: [n, ...]}; the same (cache, group, device, dtype) is shared in-process."""
        groups = [groups] if isinstance(groups, str) else list(groups)
        device = torch.device(device)
        out = {}
        for g in groups:
            self._check_group(g)
            key = (str(self.root), self.manifest.get("created"), g, str(device), str(dtype))
            with _DEVICE_LOCK:
                t = _DEVICE_VIEWS.get(key)
                if t is None:
                    parts = [torch.from_numpy(a[g]) for _, a in self.iter_batches(g, batch_size=65536)]
                    t = torch.cat(parts) if parts else torch.empty(0)
                    t = t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)
                    _DEVICE_VIEWS[key] = t
            out[g] = t
        return out

    def latent_stats(self, group: str = "latent") -> dict | None:
        """Per-channel statistics written by ``svgfeat stats``: {"mean": [C], "std": [C]} or None."""
        p = self.root / "stats.json"
        if not p.exists():
            return None
        st = json.loads(p.read_text()).get(group)
        if st is None:
            return None
        return {"mean": np.asarray(st["mean"], dtype=np.float64), "std": np.asarray(st["std"], dtype=np.float64)}


def open_cache(path, allow_incomplete: bool = False) -> FeatureCache:
    """Open a complete feature cache directory (see :mod:`svgfeat.cache.manifest` for the layout)."""
    if isinstance(path, FeatureCache):
        return path
    p = Path(path)
    if not p.is_dir():
        raise CacheError(f"feature cache not found: {p} (create one with `svgfeat extract DATA -o {p}`)")
    return FeatureCache(p, allow_incomplete=allow_incomplete)
