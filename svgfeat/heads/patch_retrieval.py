"""Patch-level retrieval: "which images contain a region like this one" (:class:`PatchIndex`).

Every (optionally subsampled) patch vector of a spatial group (``dino`` [C, h, w], ``latent``, ``dino_l{i}``) is
indexed under the key ``row·h·w + r·w + c``. A query is a set of patch vectors (e.g. a region of a query image's
patch grid); each query patch retrieves its ``k_patches`` nearest patches, and hits are aggregated per image:

- ``aggregate="max"``: an image scores the best similarity of any of its patches to any query patch;
- ``aggregate="sum"``: for every query patch, its best similarity in that image (0 when none of the image's
  patches was retrieved), summed over query patches — rewards images matching many patches of the region.

Similarity is the cosine (``metric="cosine"``) or the negated squared L2 distance (``"l2"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CacheError, ConfigError, DataError
from .exact_search import as_float32
from .query import cache_provenance, check_cache_query, is_cache
from .retrieval import FaissIndex, read_sidecar

PATCH_GROUPS = ("dino", "latent", "residual")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class PatchSource:
    """Selected patch vectors of a spatial group, streamed image by image (keys increase in add order).

    ``stride`` keeps patches with ``r % stride == 0 and c % stride == 0``; ``fraction`` then keeps each patch
    with that probability, decided by a seeded hash of (row, patch) so that a patch's selection does not depend on
    batching."""

    def __init__(self, data, group: str, stride: int, fraction: float | None, seed: int):
        if is_cache(data):
            if group not in data.groups:
                raise CacheError(f"group {group!r} is not in cache {data.root} (it has: "
                                 f"{', '.join(sorted(data.groups))})")
            shape = list(data.groups[group]["shape"])
            self.rows_n = len(data)
            self._read = lambda rows: data.read(group, rows)
        else:
            arr = data.detach().to("cpu", torch.float32).numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
            if arr.ndim != 4:
                raise DataError(f"patch features: expected [n, C, h, w], got shape {tuple(arr.shape)}")
            shape = list(arr.shape[1:])
            self.rows_n = arr.shape[0]
            self._read = lambda rows: arr[rows]
        if len(shape) != 3:
            raise ConfigError(f"group {group!r} has shape {shape}; patch retrieval needs a patch grid [C, h, w] "
                              f"(groups like {', '.join(PATCH_GROUPS)} or dino_l<i>)")
        if not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"stride must be a positive integer, got {stride!r}")
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
        self.d, self.h, self.w = shape
        self.hw = self.h * self.w
        self.stride, self.fraction, self.seed = stride, fraction, seed
        r, c = np.divmod(np.arange(self.hw), self.w)
        self.grid_mask = (r % stride == 0) & (c % stride == 0)
        self.n = int(sum(self.mask(np.arange(s, min(s + 65536, self.rows_n))).sum()
                         for s in range(0, self.rows_n, 65536)))
        if self.n == 0:
            raise DataError("no patches selected (empty data or fraction too small)")

    def mask(self, rows: np.ndarray) -> np.ndarray:
        """bool [len(rows), h·w]: which patches of these rows are indexed."""
        m = np.broadcast_to(self.grid_mask, (len(rows), self.hw))
        if self.fraction is None or self.fraction >= 1:
            return m.copy()
        keys = rows.astype(np.uint64)[:, None] * np.uint64(self.hw) + np.arange(self.hw, dtype=np.uint64)
        u = (_splitmix64(keys ^ np.uint64(self.seed * 0x632BE59BD9B4E019 % (1 << 64))) >> np.uint64(11))
        return m & (u.astype(np.float64) / float(1 << 53) < self.fraction)

    def _patches(self, rows: np.ndarray):
        grid = self._read(rows).astype(np.float32)  # [b, C, h, w]
        flat = grid.reshape(len(rows), self.d, self.hw).transpose(0, 2, 1)  # [b, hw, C]
        m = self.mask(rows)
        keys = (rows.astype(np.int64)[:, None] * self.hw + np.arange(self.hw))[m]
        return keys, np.ascontiguousarray(flat[m])

    def batches(self, batch_size: int):
        per = max(1, batch_size // max(1, int(self.grid_mask.sum())))
        for s in range(0, self.rows_n, per):
            keys, vecs = self._patches(np.arange(s, min(self.rows_n, s + per)))
            if len(keys):
                yield keys, vecs

    def sample(self, m: int, rng: np.random.Generator):
        per = max(1.0, self.n / self.rows_n)
        rows = np.sort(rng.choice(self.rows_n, size=min(self.rows_n, int(np.ceil(m / per * 1.2)) + 1),
                                  replace=False))
        keys, vecs = self._patches(rows)
        if len(keys) > m:
            sel = np.sort(rng.choice(len(keys), size=m, replace=False))
            keys, vecs = keys[sel], vecs[sel]
        return keys, vecs


@dataclass
class PatchHit:
    """One retrieved image: cache ``row``, aggregated ``score``, and its best-matching patches.

    ``patches`` int [t, 2] (row, col) in the patch grid, ``query_patches`` int [t] (which query patch each matched),
    ``patch_scores`` float [t] — sorted best first."""

    row: int
    score: float
    path: str | None
    label: int
    patches: np.ndarray
    query_patches: np.ndarray
    patch_scores: np.ndarray
    cls: str | None = field(default=None)

    def to_dict(self) -> dict:
        return {"id": self.row, "score": self.score, "path": self.path, "label": self.label, "class": self.cls,
                "patches": self.patches.tolist(), "query_patches": self.query_patches.tolist(),
                "patch_scores": [round(float(s), 6) for s in self.patch_scores]}


class PatchIndex:
    """Index the patch vectors of a cache (or an array [n, C, h, w]) and search with sets of patch vectors.

    Hyper-parameters: ``factory``/``metric``/``nprobe``/``ef_search``/``max_memory``/``device``/``backend`` as in
    :class:`~svgfeat.heads.retrieval.FaissIndex`, except that ``factory`` defaults to ``"auto"``: exact ``Flat``
    for up to 50k patches, else a graph / IVF / IVF-PQ index within ``max_memory`` (4 GB when None) — ImageNet at
    stride 2 is ~82M patches (~126 GB as Flat). An explicit factory that does not fit is refused up front; ``group`` (``"dino"``); ``stride`` / ``fraction`` / ``seed``
    subsampling (see :class:`PatchSource`). Learned: ``index_`` (FaissIndex over patches), ``grid_`` (h, w),
    ``nrows_``."""

    def __init__(self, factory: str = "auto", metric: str = "cosine", *, group: str = "dino", stride: int = 1,
                 fraction: float | None = None, seed: int = 0, nprobe: int | None = None,
                 ef_search: int | None = None, max_memory=None, batch_size: int = 16384, device="cpu",
                 backend: str = "auto", target_recall: float | None = 0.95, time_budget: float | None = None,
                 progress: bool = False):
        self.factory, self.metric, self.group = factory, metric, group
        self.stride, self.fraction, self.seed = stride, fraction, seed
        self.nprobe, self.ef_search, self.max_memory = nprobe, ef_search, max_memory
        self.batch_size, self.device, self.backend = batch_size, device, backend
        self.target_recall, self.time_budget, self.progress = target_recall, time_budget, progress

    def _inner(self) -> FaissIndex:
        return FaissIndex(self.factory, self.metric, group=self.group, nprobe=self.nprobe,
                          ef_search=self.ef_search, max_memory=self.max_memory, seed=self.seed,
                          batch_size=self.batch_size, device=self.device, backend=self.backend,
                          target_recall=self.target_recall, time_budget=self.time_budget, progress=self.progress)

    def fit(self, X, y=None, *, paths=None, labels=None, provenance: dict | None = None) -> PatchIndex:
        """Build from a FeatureCache (group ``self.group``) or patch grids ``X`` [n, C, h, w]. Returns self."""
        src = PatchSource(X, self.group, self.stride, self.fraction, self.seed)
        if is_cache(X):
            prov = cache_provenance(X, self.group)
            meta = {"paths": list(X.paths), "labels": X.labels.tolist(), "classes": list(X.classes),
                    "root": X.manifest.get("dataset", {}).get("root")}
        else:
            lab = labels if labels is not None else y
            prov = dict(provenance) if provenance else None
            meta = {"paths": [str(p) for p in paths] if paths is not None else None,
                    "labels": np.asarray(lab).astype(np.int64).tolist() if lab is not None else None,
                    "classes": [], "root": None}
        inner = self._inner()
        inner._validate()
        inner._kind_name = "patch"
        self.index_ = inner._build(
            src, prov, meta, what=f"patch index ({src.rows_n} images x {src.n // max(src.rows_n, 1)} patches)",
            hint=", or keep fewer patches with --stride / --fraction")
        self.grid_ = (src.h, src.w)
        self.nrows_ = src.rows_n
        return self

    # ------------------------------------------------------------------ searching
    def _check_fitted(self):
        if not hasattr(self, "index_"):
            raise ConfigError("this PatchIndex is not built yet: call fit(cache) or PatchIndex.load(path) first")

    @property
    def provenance_(self):
        return self.index_.provenance_

    @staticmethod
    def region_vectors(grid, region=None) -> np.ndarray:
        """Patch grid [C, h, w] (numpy/torch) and ``region`` = (r0, r1, c0, c1) half-open grid bounds (None: the
        whole grid) -> query vectors float32 [m, C] in row-major order."""
        g = grid.detach().to("cpu", torch.float32).numpy() if isinstance(grid, torch.Tensor) else np.asarray(grid)
        if g.ndim != 3:
            raise DataError(f"patch grid: expected [C, h, w], got shape {tuple(g.shape)}")
        C, h, w = g.shape
        r0, r1, c0, c1 = region if region is not None else (0, h, 0, w)
        if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
            raise ConfigError(f"region {region}: expected 0 <= r0 < r1 <= {h} and 0 <= c0 < c1 <= {w}")
        return np.ascontiguousarray(g[:, r0:r1, c0:c1].reshape(C, -1).T, dtype=np.float32)

    def search(self, query, k: int = 10, k_patches: int | None = None, aggregate: str = "max",
               exclude=()) -> list[PatchHit]:
        """``query``: patch vectors [m, C] / [C] or a grid [C, h, w] (numpy/torch). Returns up to ``k`` images,
        best first. ``k_patches`` nearest patches per query patch (default ``max(100, 10·k)``); ``exclude``:
        rows to leave out (e.g. the query image itself)."""
        self._check_fitted()
        if aggregate not in ("max", "sum"):
            raise ConfigError(f"aggregate={aggregate!r}: expected 'max' or 'sum'")
        if aggregate == "sum" and self.metric == "l2":
            raise ConfigError("aggregate='sum' adds similarities and needs metric 'cosine' or 'ip' "
                              "(this index uses 'l2'); use aggregate='max'")
        if isinstance(query, (np.ndarray, torch.Tensor)) and query.ndim == 3:
            query = self.region_vectors(query)
        q = as_float32(query, "query patches")
        kp = int(k_patches or max(100, 10 * k))
        D, nbr = self.index_.search(q, min(kp, self.index_.ntotal_))
        sim = -D if self.metric == "l2" else D
        qi = np.repeat(np.arange(len(q)), nbr.shape[1])
        keys, sim = nbr.reshape(-1), sim.reshape(-1)
        ok = keys >= 0
        qi, keys, sim = qi[ok], keys[ok], sim[ok]
        h, w = self.grid_
        rows, pos = np.divmod(keys, h * w)
        if len(exclude):
            keep = ~np.isin(rows, np.asarray(list(exclude), dtype=np.int64))
            qi, rows, pos, sim = qi[keep], rows[keep], pos[keep], sim[keep]
        # best hit per (row, query patch)
        order = np.lexsort((-sim, qi, rows))
        qi, rows, pos, sim = qi[order], rows[order], pos[order], sim[order]
        first = np.ones(len(rows), bool)
        first[1:] = (rows[1:] != rows[:-1]) | (qi[1:] != qi[:-1])
        qi, rows, pos, sim = qi[first], rows[first], pos[first], sim[first]
        uniq, start = np.unique(rows, return_index=True)
        if aggregate == "max":
            scores = np.maximum.reduceat(sim, start) if len(sim) else sim
        else:
            scores = np.add.reduceat(sim, start) if len(sim) else sim
        best = np.argsort(-scores, kind="stable")[:k]
        ends = np.append(start[1:], len(rows))
        meta = self.index_.meta_
        paths, labels, classes = meta.get("paths"), meta.get("labels"), meta.get("classes") or []
        out = []
        for b in best:
            s, e = start[b], ends[b]
            o = np.argsort(-sim[s:e], kind="stable")
            r = int(uniq[b])
            lab = int(labels[r]) if labels is not None else -1
            rr, cc = np.divmod(pos[s:e][o], w)
            out.append(PatchHit(row=r, score=float(scores[b]), path=paths[r] if paths is not None else None,
                                label=lab, patches=np.stack([rr, cc], 1).astype(np.int64),
                                query_patches=qi[s:e][o].astype(np.int64), patch_scores=sim[s:e][o],
                                cls=classes[lab] if 0 <= lab < len(classes) else None))
        return out

    def search_cache(self, cache, row: int, region=None, k: int = 10, **kw) -> list[PatchHit]:
        """Query with ``region`` of cache row ``row``'s patch grid (provenance-checked against the index)."""
        from ..cache import open_cache

        self._check_fitted()
        cache = open_cache(cache)
        group = self.provenance_.get("group") if self.provenance_ else self.group
        check_cache_query(self.provenance_, cache, group)
        return self.search(self.region_vectors(cache.read(group, int(row)), region), k, **kw)

    def search_images(self, image, encoder, region=None, k: int = 10, device=None, **kw) -> list[PatchHit]:
        """Encode one image with ``encoder`` (spec must match the index) and query with a region of its grid."""
        from .query import check_encoder, encode_images

        self._check_fitted()
        prov = self.provenance_ or {}
        if not prov.get("encoder"):
            raise CacheError("this index was built from arrays without provenance; it cannot encode images")
        check_encoder(prov, encoder)
        grid = encode_images(encoder, [image], prov["transform"], prov["group"], device=device)[0]
        return self.search(self.region_vectors(grid, region), k, **kw)

    # ------------------------------------------------------------------ persistence
    def info(self) -> dict:
        self._check_fitted()
        return {**self.index_.info(), "kind": "patch",
                "patch": {"grid": list(self.grid_), "rows": self.nrows_, "stride": self.stride,
                          "fraction": self.fraction}}

    def save(self, path) -> Path:
        self._check_fitted()
        return self.index_.save(path, extra={"kind": "patch", "patch": self.info()["patch"],
                                             "patch_params": {"group": self.group, "stride": self.stride,
                                                              "fraction": self.fraction, "seed": self.seed}})

    @classmethod
    def load(cls, path, device="cpu") -> PatchIndex:
        side = read_sidecar(path)
        if side.get("kind") != "patch":
            raise CacheError(f"{path} is a {side.get('kind', 'global')} index, not a patch index "
                             "(load it with FaissIndex.load)")
        inner = FaissIndex.load(path, device=device)
        inner._kind_name = "patch"
        pp = side.get("patch_params", {})
        obj = cls(inner.factory, inner.metric, group=pp.get("group", "dino"), stride=pp.get("stride", 1),
                  fraction=pp.get("fraction"), seed=pp.get("seed", 0), nprobe=inner.nprobe,
                  ef_search=inner.ef_search, max_memory=inner.max_memory, device=device, backend=inner.backend)
        obj.index_ = inner
        obj.grid_ = tuple(side["patch"]["grid"])
        obj.nrows_ = int(side["patch"]["rows"])
        return obj


def load_any(path, device="cpu"):
    """Load a FaissIndex or a PatchIndex, whichever the sidecar at ``path`` describes."""
    side = read_sidecar(path)
    return (PatchIndex if side.get("kind") == "patch" else FaissIndex).load(path, device=device)
