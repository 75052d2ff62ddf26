"""Nearest-neighbour retrieval over cached features: :class:`FaissIndex`.

faiss's contract: ``index.search(queries [nq, d], k) -> (D float32 [nq, k], I int64 [nq, k])``. ``I`` holds the
keys the vectors were added under (cache row ids, or ``0..n-1`` for arrays); ``-1`` pads missing results.
``D`` is the cosine similarity (``metric="cosine"``, larger is closer) or the squared L2 distance (``"l2"``).

Backends: faiss (CPU; GPU via ``device="cuda[:i]"`` when ``faiss.get_num_gpus() > 0``, CPU otherwise with a
warning) or, when faiss is not installed, exact torch search for small data (``n·d <= TORCH_EXACT_MAX``). An
approximate factory without faiss raises :class:`~svgfeat.errors.MissingDependencyError`: never silently a
different kind of search.

Files written by :meth:`FaissIndex.save`: ``PATH`` (a plain faiss index, ``faiss.read_index`` reads it; or a
safetensors file of vectors for the torch backend), ``PATH.json`` (the sidecar: factory, metric, provenance,
recall, keys -> paths/labels) and ``PATH.keys.npy`` when the keys are not simply ``0..n-1``.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..atomic import atomic_file, atomic_path, write_bytes_atomic, written_by_svgfeat
from ..errors import CacheError, ConfigError, DataError, MissingDependencyError, SvgfeatError
from ..regular_files import checked_path, opened
from . import index_factory as fac
from . import index_tuning as tune
from .exact_search import TopK, as_float32, batch_scores, exact_search, l2_normalize, recall_at_k
from .faiss_gpu import GPU_MAX_K, to_gpu
from .index_sidecar import SIDECAR_FORMAT, read_sidecar  # noqa: F401  (re-exported)
from .index_tuning import bar
from .query import (
    ArraySource,
    CacheSource,
    cache_provenance,
    check_cache_query,
    check_source_current,
    is_cache,
)

TORCH_EXACT_MAX = 1 << 28  # n*d floats (1 GiB of float32) searched exactly in torch when faiss is absent
METRICS = ("cosine", "l2", "ip")


def import_faiss(required: bool = True):
    """``faiss`` or None; with ``required`` a MissingDependencyError explaining how to install it."""
    try:
        import faiss
    except ImportError:
        if required:
            raise MissingDependencyError("faiss-cpu", "faiss", "Approximate nearest-neighbour search") from None
        return None
    return faiss


def _gpu_id(faiss, device) -> int | None:
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    if faiss is None or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() <= 0:
        warnings.warn(f"device={device!s}: faiss has no GPU support here (install faiss-gpu); "
                      "searching on the CPU", stacklevel=3)
        return None
    return dev.index if dev.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)


class FaissIndex:
    """A searchable index over feature vectors (scikit-learn style estimator, faiss's search contract).

    Hyper-parameters (stored as given; nothing happens before :meth:`fit`):
    factory: a faiss ``index_factory`` string (``"Flat"``, ``"IVF4096,PQ64"``, ``"HNSW32"``, ``"OPQ16,IVF256,PQ16"``)
        or ``"auto"`` (chosen from n, d and ``max_memory``; see :mod:`svgfeat.heads.index_factory`).
    metric: ``"cosine"`` (L2-normalised inner product; default), ``"ip"`` (raw inner product) or ``"l2"``.
    group: the cache group indexed when ``fit`` gets a FeatureCache (default ``"pooled"``).
    nprobe / ef_search: IVF lists visited / HNSW search depth (None: ``max(8, sqrt(nlist))`` and 64).
    max_memory: memory budget (bytes or ``"4GB"``). ``"auto"`` picks a factory within it (None: 4 GB); every
        factory is checked against it before anything is read (None: against the memory available now), and an
        index that cannot fit is refused with a ConfigError suggesting ``--auto`` / IVF-PQ.
    train_size: vectors sampled (seeded) to train IVF/PQ (None: 64·nlist, within faiss's 30–256·nlist rule, at
        least 10k for PQ, capped at n); the coarse quantiser is trained by our k-means (progress per iteration).
    measure_recall: measure recall@``recall_k`` against exact search on ``recall_queries`` held-out queries while
        building (None: for every approximate index). The queries are ``fit(..., queries=)`` (e.g. a val cache)
        or up to n/10 rows of the data kept out of the index until measured, then added.
    target_recall: with a measured approximate index whose nprobe / efSearch is not given, the smallest setting
        reaching this recall@k is chosen and stored as the index's default (None: keep the defaults). When it
        cannot be reached, ``recall_`` says so (``met`` False, ``why``) with the best setting found.
    time_budget: seconds of the whole build after which tuning stops with the best setting so far, tuning always
        getting at least a tenth of it (None: no limit).
    progress: tqdm bars on stderr for k-means training, adding and tuning.
    device: ``"cpu"`` or ``"cuda[:i]"`` (faiss-gpu; falls back to CPU with a warning).
    backend: ``"auto"`` (faiss, else exact torch for small data), ``"faiss"`` or ``"torch"`` (exact only).

    Learned attributes: ``factory_`` (resolved string), ``factory_reason_``, ``ntotal_``, ``dim_``, ``backend_``,
    ``keys_`` (int64 [n]), ``provenance_`` (dict or None), ``meta_`` ({"paths", "labels", "classes"}),
    ``recall_`` ({"k", "recall", "queries", "target", "met", "why", "params", ...} or None), ``build_seconds_``,
    ``memory_estimate_`` (bytes).
    """

    def __init__(self, factory: str = "Flat", metric: str = "cosine", *, group: str = "pooled",
                 nprobe: int | None = None, ef_search: int | None = None, max_memory=None,
                 train_size: int | None = None, seed: int = 0, measure_recall: bool | None = None,
                 recall_queries: int = 1000, recall_k: int = 10, batch_size: int = 16384,
                 device="cpu", backend: str = "auto", target_recall: float | None = 0.95,
                 time_budget: float | None = None, progress: bool = False):
        self.factory, self.metric, self.group = factory, metric, group
        self.nprobe, self.ef_search, self.max_memory = nprobe, ef_search, max_memory
        self.train_size, self.seed, self.measure_recall = train_size, seed, measure_recall
        self.recall_queries, self.recall_k, self.batch_size = recall_queries, recall_k, batch_size
        self.device, self.backend = device, backend
        self.target_recall, self.time_budget, self.progress = target_recall, time_budget, progress

    # ------------------------------------------------------------------ sklearn plumbing
    def get_params(self, deep: bool = True) -> dict:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params) -> FaissIndex:
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ConfigError(f"FaissIndex has no parameter {k!r}; expected one of {sorted(valid)}")
            setattr(self, k, v)
        return self

    def __len__(self) -> int:
        return int(getattr(self, "ntotal_", 0))

    def __repr__(self) -> str:
        if not hasattr(self, "ntotal_"):
            return f"FaissIndex(factory={self.factory!r}, metric={self.metric!r}, unfitted)"
        return (f"FaissIndex({self.factory_!r}, metric={self.metric!r}, n={self.ntotal_}, d={self.dim_}, "
                f"backend={self.backend_!r})")

    # ------------------------------------------------------------------ building
    def _validate(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric={self.metric!r}: expected one of {METRICS}")
        if self.backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"backend={self.backend!r}: expected 'auto', 'faiss' or 'torch'")
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ConfigError(f"factory must be a faiss index_factory string or 'auto', got {self.factory!r}")

    def fit(self, X, y=None, *, group: str | None = None, paths=None, labels=None, provenance: dict | None = None,
            queries=None):
        """Build the index from a FeatureCache (group ``group or self.group``, streamed in batches) or from
        vectors ``X`` [n, d] (numpy / torch, any device). ``y``/``labels``/``paths`` attach metadata to array
        inputs (a cache brings its own). ``provenance`` (arrays only) enables query checks. ``queries``: held-out
        vectors or a cache (same encoder) for the recall measurement (None: rows of X held out). Returns self."""
        self._validate()
        qsrc = None
        if is_cache(X):
            g = group or self.group
            src = CacheSource(X, g)
            prov = cache_provenance(X, g)
            if is_cache(queries):
                check_cache_query(prov, queries, g)
                qsrc = CacheSource(queries, g)
            elif queries is not None:
                qsrc = ArraySource(queries)
            meta = {"paths": list(X.paths), "labels": X.labels.tolist(), "classes": list(X.classes),
                    "root": X.manifest.get("dataset", {}).get("root")}
        else:
            src = ArraySource(X)
            prov = dict(provenance) if provenance else None
            lab = labels if labels is not None else y
            meta = {"paths": [str(p) for p in paths] if paths is not None else None,
                    "labels": np.asarray(lab).astype(np.int64).tolist() if lab is not None else None,
                    "classes": [], "root": None}
            for name, v in (("paths", meta["paths"]), ("labels", meta["labels"])):
                if v is not None and len(v) != src.n:
                    raise DataError(f"{name} has {len(v)} entries but X has {src.n} rows")
            if queries is not None:
                qsrc = ArraySource(queries)
        return self._build(src, prov, meta, queries=qsrc)

    def _resolve_factory(self, n: int, d: int) -> tuple[str, str]:
        if self.factory.strip().lower() == "auto":
            return fac.auto_factory(n, d, self.max_memory or fac.AUTO_MEMORY)
        return self.factory.strip(), "given"

    def _pick_backend(self, factory: str, n: int, d: int):
        faiss = None if self.backend == "torch" else import_faiss(required=self.backend == "faiss")
        if faiss is not None:
            return faiss, "faiss"
        if not fac.is_exact(factory):
            if self.backend == "torch":
                raise ConfigError(f"backend='torch' searches exactly; factory={factory!r} is approximate "
                                  "(use factory='Flat' or backend='faiss')")
            raise MissingDependencyError("faiss-cpu", "faiss", f"The approximate index {factory!r}")
        if self.backend == "auto" and n * d > TORCH_EXACT_MAX:
            raise MissingDependencyError(
                "faiss-cpu", "faiss",
                f"Searching {n} x {d} vectors (above the exact torch fallback limit of {TORCH_EXACT_MAX} floats)")
        return None, "torch"

    def _build(self, src, prov, meta, what: str = "index", hint: str = "", queries=None):
        t0 = time.perf_counter()
        n, d = src.n, src.d
        factory, reason = self._resolve_factory(n, d)
        # refuse up front what cannot fit (max_memory when given, else the memory available now)
        self.memory_estimate_ = fac.check_memory(factory, n, d, self.max_memory, what=what, hint=hint)
        faiss, backend = self._pick_backend(factory, n, d)
        cosine = self.metric == "cosine"
        kind = "l2" if self.metric == "l2" else "ip"
        rng = np.random.default_rng(self.seed)
        exact = fac.is_exact(factory)
        measure = (not exact) if self.measure_recall is None else bool(self.measure_recall)
        self.factory_, self.factory_reason_, self.dim_, self.backend_ = factory, reason, d, backend
        self._kind, self._cosine = kind, cosine
        self.provenance_, self.meta_ = prov, meta
        self._gpu = None

        # held-out queries: `queries` (e.g. a val cache) when given, else rows of the data kept out of the index
        # until the recall is measured (added afterwards, so every row stays searchable)
        held = np.zeros(0, np.int64)
        qvecs = top = None
        if measure:
            if queries is not None:
                _, qvecs = queries.sample(min(self.recall_queries, queries.n), np.random.default_rng(self.seed + 1))
                if qvecs.shape[1] != d:
                    raise DataError(f"recall queries have dimension {qvecs.shape[1]}, the indexed vectors {d}")
            else:
                nq = min(self.recall_queries, max(1, n // 10))
                held, qvecs = src.sample(nq, np.random.default_rng(self.seed + 1))
            qvecs = l2_normalize(qvecs) if cosine else np.ascontiguousarray(qvecs, dtype=np.float32)
            top = TopK(len(qvecs), self.recall_k, largest=kind == "ip")
            qt = torch.from_numpy(qvecs)

        index = None
        if faiss is not None:
            index = self._train(faiss, factory, d, n, src, rng, cosine)

        keys, pos = [], 0
        store = torch.empty((n, d), dtype=torch.float32) if index is None else None  # torch backend: one matrix
        with bar(-(-n // self.batch_size), f"adding {n} vectors", "batch", self.progress) as pb:
            for bkeys, xb in src.batches(self.batch_size):
                xb = l2_normalize(xb) if cosine else np.ascontiguousarray(xb, dtype=np.float32)
                bkeys = np.asarray(bkeys, dtype=np.int64)
                if len(held):
                    keep = ~np.isin(bkeys, held)
                    bkeys, xb = bkeys[keep], np.ascontiguousarray(xb[keep])
                if index is not None:
                    index.add(xb)
                else:
                    store[pos:pos + len(xb)] = torch.from_numpy(xb)
                pos += len(xb)
                if top is not None and len(xb):
                    top.update(batch_scores(qt, torch.from_numpy(xb), kind), torch.from_numpy(bkeys)[None])
                keys.append(bkeys)
                pb.update(1)
        self.keys_ = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        self.ntotal_ = len(self.keys_)
        self._index = index
        self._vectors = store
        self._applied = None
        self.recall_ = {"k": self.recall_k, "recall": 1.0, "queries": 0, "exact": True} if exact else None
        if top is not None:
            self.recall_ = self._measure_and_tune(faiss, qvecs, top, t0,
                                                  "val" if queries is not None else "rows")
        if len(held):  # the held-out rows join the index now that the recall is measured
            if index is not None:
                index.add(qvecs)
            else:
                store[pos:pos + len(qvecs)] = torch.from_numpy(qvecs)
            pos += len(qvecs)
            self.keys_ = np.concatenate([self.keys_, held])
            self.ntotal_ = len(self.keys_)
        assert pos == n, f"source yielded {pos} vectors, expected {n}"
        self._applied = None
        self._to_device()
        self.build_seconds_ = time.perf_counter() - t0
        return self

    def _train(self, faiss, factory: str, d: int, n: int, src, rng, cosine: bool):
        metric = faiss.METRIC_L2 if self._kind == "l2" else faiss.METRIC_INNER_PRODUCT
        return tune.make_index(faiss, factory, d, n, metric, src, rng, cosine, train_size=self.train_size,
                               seed=self.seed, progress=self.progress, gid=_gpu_id(faiss, self.device))

    def _measure_and_tune(self, faiss, qvecs, top, t0: float, held_out: str) -> dict:
        """recall@k of the held-out queries against exact search; when the index has a speed/recall knob that
        the user did not fix (nprobe / efSearch), the smallest setting reaching ``target_recall`` is chosen
        within the build-time budget and kept as the index's default."""
        k = self.recall_k
        _, truth = top.result()
        spec = tune.knob(faiss, self._index, self.factory_) if faiss is not None else None
        fixed = spec is not None and (self.nprobe if spec[0] == "nprobe" else self.ef_search) is not None
        out = {"k": k, "queries": len(qvecs), "exact": fac.is_exact(self.factory_), "held_out": held_out}
        if spec is None or fixed or self.target_recall is None:
            _, got = self._search_normalized(qvecs, k)
            out["recall"] = round(recall_at_k(got, truth, k), 4)
            if self.target_recall is not None:
                out.update(target=self.target_recall, met=out["recall"] >= self.target_recall,
                           why="" if out["recall"] >= self.target_recall else
                           ("the search parameters were given" if fixed else f"{self.factory_} has no search knob"))
            return out
        name, vmin, vmax = spec
        attr = "nprobe" if name == "nprobe" else "ef_search"

        def run(v):
            setattr(self, attr, max(v, k) if name == "efSearch" else v)
            return self._search_normalized(qvecs, k)[1]

        # the budget covers the whole build, but tuning (a few searches of the held-out queries) always gets a
        # tenth of it: a slow training pass must not leave the index at its first, worst setting
        budget = self.time_budget if self.time_budget is not None else float("inf")
        deadline = max(t0 + budget, time.perf_counter() + budget / 10)
        res = tune.tune_search(run, truth, k, name, vmin, vmax, self.target_recall, deadline, self.progress)
        setattr(self, attr, res["value"])
        if not res["met"] and ("PQ" in self.factory_ or "SQ" in self.factory_):
            res["why"] += "; compressed codes limit the recall (raise --max-memory for IVF-Flat)"
        out.update(recall=res["recall"], target=self.target_recall, met=res["met"], why=res["why"],
                   params={name: res["value"]}, query_ms=res["query_ms"], tried=res["tried"])
        return out

    def _to_device(self) -> None:
        if self.backend_ == "torch":
            self._vectors = self._vectors.to(self.device)
            return
        faiss = import_faiss()
        gid = _gpu_id(faiss, self.device)
        if gid is not None:
            try:
                self._gpu = to_gpu(faiss, gid, self._index)  # the process-wide resources of that GPU
            except RuntimeError as e:  # e.g. HNSW has no GPU implementation
                warnings.warn(f"{self.factory_!r} cannot run on the GPU ({str(e).strip().splitlines()[-1]}); "
                              "searching on the CPU", stacklevel=3)
                self._gpu = None

    # ------------------------------------------------------------------ searching
    def _check_fitted(self) -> None:
        if not hasattr(self, "ntotal_"):
            raise ConfigError("this FaissIndex is not built yet: call fit(X) or FaissIndex.load(path) first")

    def search_params(self) -> dict:
        """The effective search-time parameters: {"nprobe": int} for IVF, {"efSearch": int} for HNSW."""
        self._check_fitted()
        if self.backend_ != "faiss":
            return {}
        faiss = import_faiss()
        out = {}
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            out["nprobe"] = int(self.nprobe or fac.default_nprobe(ivf.nlist))
        if "HNSW" in self.factory_:
            out["efSearch"] = int(self.ef_search or 64)
        return out

    def _apply_params(self) -> None:
        params = self.search_params()
        if params == self._applied or not params:
            return
        faiss = import_faiss()
        target = self._gpu if self._gpu is not None else self._index
        ps = faiss.GpuParameterSpace() if self._gpu is not None else faiss.ParameterSpace()
        for name, v in params.items():
            ps.set_index_parameter(target, name, v)
        self._applied = params

    def _search_normalized(self, q: np.ndarray, k: int):
        if self.backend_ == "torch":
            D, nbr = exact_search(q, self._vectors, k, self._kind, device=self._vectors.device)
        elif self._gpu is not None and k > GPU_MAX_K:
            D, nbr = self._search_beyond_gpu_k(q, k)
        else:
            self._apply_params()
            index = self._gpu if self._gpu is not None else self._index
            D, nbr = index.search(q, k)
        keys = np.where(nbr >= 0, self.keys_[np.clip(nbr, 0, max(self.ntotal_ - 1, 0))], -1) if self.ntotal_ else nbr
        return D.astype(np.float32, copy=False), keys.astype(np.int64, copy=False)

    def _search_beyond_gpu_k(self, q: np.ndarray, k: int):
        """k > faiss-gpu's limit: an exact index is searched exactly in torch on the device (its vectors
        reconstructed once), an approximate one with its CPU copy; a warning says which."""
        faiss = import_faiss()
        if fac.is_exact(self.factory_):
            warnings.warn(f"k={k} > {GPU_MAX_K} (faiss-gpu's limit): exact torch search on {self.device}",
                          stacklevel=4)
            if getattr(self, "_exact_vectors", None) is None:
                self._exact_vectors = torch.from_numpy(self._index.reconstruct_n(0, self.ntotal_)).to(self.device)
            return exact_search(q, self._exact_vectors, k, self._kind, device=self.device)
        warnings.warn(f"k={k} > {GPU_MAX_K} (faiss-gpu's limit): searching {self.factory_!r} with its CPU copy",
                      stacklevel=4)
        self._applied = None
        params = self.search_params()
        ps = faiss.ParameterSpace()
        for name, v in params.items():
            ps.set_index_parameter(self._index, name, v)
        return self._index.search(q, k)

    def search(self, queries, k: int = 10):
        """``queries`` [nq, d] (or [d]) numpy / torch (CPU or GPU) -> ``(D float32 [nq, k], I int64 [nq, k])``."""
        self._check_fitted()
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        q = as_float32(queries, "queries")
        if q.shape[1] != self.dim_:
            raise DataError(f"queries have dimension {q.shape[1]} but the index holds {self.dim_}-d vectors")
        if self._cosine:
            q = l2_normalize(q)
        return self._search_normalized(q, int(k))

    def search_cache(self, cache, rows=None, k: int = 10):
        """Search with rows of another (or the same) cache; refuses a cache whose encoder/transform/group
        differ from the index's provenance (CacheError naming the difference)."""
        from ..cache import open_cache

        cache = open_cache(cache)
        group = (self.provenance_ or {}).get("group", self.group)
        check_cache_query(self.provenance_, cache, group)
        q = cache.read(group, np.arange(len(cache)) if rows is None else np.atleast_1d(rows))
        return self.search(q.reshape(len(q), -1), k)

    def search_images(self, images, encoder, k: int = 10, device=None):
        """Encode images (paths / PIL / bytes) with ``encoder`` and the index's transform, then search.
        The encoder's spec (model, weight sha256s, alignment) must match the index's provenance."""
        from .query import check_encoder, encode_images

        prov = self.provenance_ or {}
        if not prov.get("encoder"):
            raise CacheError("this index was built from arrays without provenance; it cannot encode image "
                             "queries (build it from a feature cache)")
        check_encoder(prov, encoder)
        q = encode_images(encoder, images, prov["transform"], prov["group"], device=device)
        return self.search(q.reshape(len(q), -1), k)

    def describe(self, D, nbr) -> list[list[dict]]:
        """``(D, I)`` -> per query a list of {"id", "score", "path", "label", "class"} (missing ids dropped)."""
        paths, labels = self.meta_.get("paths"), self.meta_.get("labels")
        classes = self.meta_.get("classes") or []
        out = []
        for drow, irow in zip(np.asarray(D), np.asarray(nbr)):
            hits = []
            for s, i in zip(drow, irow):
                if i < 0:
                    continue
                lab = int(labels[i]) if labels is not None else -1
                hits.append({"id": int(i), "score": float(s), "path": paths[i] if paths is not None else None,
                             "label": lab, "class": classes[lab] if 0 <= lab < len(classes) else None})
            out.append(hits)
        return out

    # ------------------------------------------------------------------ persistence
    def info(self) -> dict:
        """The sidecar's summary (everything but the per-row metadata)."""
        self._check_fitted()
        return {"format": SIDECAR_FORMAT, "format_version": 1, "svgfeat_version": __version__,
                "kind": getattr(self, "_kind_name", "global"), "factory": self.factory_,
                "factory_requested": self.factory, "factory_reason": self.factory_reason_,
                "metric": self.metric, "dim": self.dim_, "ntotal": self.ntotal_, "backend": self.backend_,
                "search_params": self.search_params(), "seed": self.seed, "recall": self.recall_,
                "build_seconds": round(self.build_seconds_, 3), "provenance": self.provenance_,
                "group": (self.provenance_ or {}).get("group", self.group)}

    def save(self, path, extra: dict | None = None) -> Path:
        """Write ``path`` (index), ``path.json`` (sidecar) and, if needed, ``path.keys.npy``."""
        self._check_fitted()
        path = Path(path)
        if path.exists() and not path.is_file():
            raise CacheError(f"cannot write the index to {path}: it exists and is not a regular file")
        try:  # whole or nothing, marked as svgfeat's (svgfeat.atomic): a failed write leaves no partial index
            with atomic_path(path) as tmp:
                if self.backend_ == "torch":
                    from safetensors.torch import save_file

                    save_file({"vectors": self._vectors.cpu().contiguous()}, str(tmp),
                              metadata={"format": "svgfeat-exact-index"})
                else:
                    faiss = import_faiss()
                    cpu = faiss.index_gpu_to_cpu(self._gpu) if self._gpu is not None else self._index
                    faiss.write_index(cpu, str(tmp))
        except (CacheError, OSError):
            raise
        except Exception as e:  # noqa: BLE001 - faiss/safetensors report I/O failures as their own types
            raise CacheError(f"cannot write the index to {path}: {_reason(e)}") from None
        simple = bool(np.array_equal(self.keys_, np.arange(self.ntotal_)))
        keys_file = path.with_name(path.name + ".keys.npy")
        if not simple:
            with atomic_file(keys_file) as f:
                np.save(f, self.keys_, allow_pickle=False)
        elif keys_file.is_file() and written_by_svgfeat(keys_file):
            keys_file.unlink()  # a stale keys file of an earlier build of ours (never a user's file)
        side = {**self.info(), "keys": "range" if simple else keys_file.name,
                "params": {k: v for k, v in self.get_params().items() if k != "device"},
                "meta": self.meta_, **(extra or {})}
        write_bytes_atomic(path.with_name(path.name + ".json"), json.dumps(side, default=_json_default).encode())
        return path

    @classmethod
    def load(cls, path, device="cpu") -> FaissIndex:
        """Load an index written by :meth:`save` (the sidecar decides the backend)."""
        path = Path(path)
        side = read_sidecar(path)
        check_source_current(side.get("provenance"), path, patch=side.get("kind") == "patch")
        params = {k: v for k, v in side.get("params", {}).items() if k in cls().get_params()}
        obj = cls(**{**params, "device": device})
        obj._restore(path, side)
        return obj

    def _restore(self, path: Path, side: dict) -> None:
        self.factory_, self.factory_reason_ = side["factory"], side.get("factory_reason", "")
        self.dim_, self.ntotal_, self.backend_ = int(side["dim"]), int(side["ntotal"]), side["backend"]
        self._kind, self._cosine = ("l2" if self.metric == "l2" else "ip"), self.metric == "cosine"
        self.provenance_, self.meta_, self.recall_ = side.get("provenance"), side.get("meta", {}), side.get("recall")
        self.build_seconds_ = float(side.get("build_seconds", 0.0))
        self._gpu, self._applied, self._index, self._vectors = None, None, None, None
        try:  # an empty, truncated, pickled or foreign file is a broken index, not a crash
            if side.get("keys", "range") == "range":
                self.keys_ = np.arange(self.ntotal_, dtype=np.int64)
            else:
                with opened(path.with_name(side["keys"]), "index keys", error=CacheError) as f:
                    self.keys_ = np.load(f, allow_pickle=False).astype(np.int64)
            if self.backend_ == "torch":
                from safetensors.torch import load_file

                with checked_path(path, "index", error=CacheError) as q:
                    self._vectors = load_file(q)["vectors"].float()
            else:
                faiss = import_faiss()
                with checked_path(path, "index", error=CacheError) as q:
                    self._index = faiss.read_index(q)
        except SvgfeatError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the decoder says, the file is not a usable index
            why = _reason(e)
            raise CacheError(f"{path}: broken or foreign index file ({why}); rebuild it with `svgfeat index "
                             "build`") from None
        n, d = (self._vectors.shape if self._index is None else (self._index.ntotal, self._index.d))
        if n != self.ntotal_ or d != self.dim_:
            raise CacheError(f"{path}: index holds {n} x {d} vectors but its sidecar says {self.ntotal_} x "
                             f"{self.dim_}; the files do not belong together")
        if len(self.keys_) != self.ntotal_:
            raise CacheError(f"{path}: {len(self.keys_)} keys for {self.ntotal_} vectors")
        self._to_device()


def _reason(e: Exception) -> str:
    """A faiss/safetensors exception as a short one-line reason (without faiss's C++ source location)."""
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", " ".join(str(e).split()))
    return re.sub(r"^Error: '.*?' failed: ", "", text) or type(e).__name__


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
