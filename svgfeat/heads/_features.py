"""Feature specs: turn a cache, an :class:`~svgfeat.models.svg.SVGFeatures`, a group dict or a plain
matrix into the ``[n, D]`` float matrix a classification head consumes.

Spec grammar (terms joined with ``+``, concatenated in the order written)::

    cls | pooled | registers | latent | dino | residual      base groups
    cls_l<i> | pooled_l<i> | dino_l<i>                      block-i groups
    last<n>        DINOv2/v3 linear-probe input: CLS of the last n blocks + mean patch token of the last
    last<n>_cls    CLS of the last n blocks only

Groups with spatial extent are average-pooled: ``latent`` [C, h, w] -> [C] (SVG's 392-d pooled latent),
``registers`` [R, C] -> [C]. ``cls+pooled`` is DINOv3's default probe input (2 x 384 = 768-d).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CacheError, ConfigError
from ._base import is_cache, progress_bar  # one home for the cache check

BASE_GROUPS = ("cls", "pooled", "registers", "latent", "dino", "residual")
_LAYER_RE = re.compile(r"^(cls|pooled|dino)_l(\d+)$")
_LAST_RE = re.compile(r"^last(\d+)(_cls)?$")
DEFAULT_SPEC = "cls+pooled"


@dataclass
class FeatureMatrix:
    """A feature matrix with its row metadata.

    X: float32 np.ndarray or torch.Tensor [n, D]; y: np.int64 [n] or None; sample_ids / view_ids: np.int64
    [n] (rows that are augmented views of one image share a sample_id); groups: the groups concatenated.
    """

    X: np.ndarray | torch.Tensor
    y: np.ndarray | None
    sample_ids: np.ndarray
    view_ids: np.ndarray
    groups: list[str]
    spec: str | None


def parse_spec(spec: str) -> list[str]:
    """Split a spec into validated terms (``last<n>`` left unexpanded). Raises ConfigError."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"feature spec must be a non-empty string like 'cls+pooled', got {spec!r}")
    terms = [t.strip() for t in spec.split("+")]
    for t in terms:
        if t in BASE_GROUPS or _LAYER_RE.match(t) or _LAST_RE.match(t):
            continue
        raise ConfigError(
            f"unknown feature {t!r} in spec {spec!r}; expected terms from {', '.join(BASE_GROUPS)}, "
            "cls_l<i>, pooled_l<i>, dino_l<i>, last<n> or last<n>_cls joined with '+'"
        )
    return terms


def _layer_indices(names) -> list[int]:
    out = set()
    for n in names:
        m = _LAYER_RE.match(n)
        if m and m.group(1) == "cls":
            out.add(int(m.group(2)))
    return sorted(out)


def resolve_spec(spec: str, available) -> list[str]:
    """Expand ``spec`` into concrete group names that all exist in ``available`` (names or layer ids).

    ``available``: iterable of group names (e.g. a cache's ``groups``). Raises ConfigError naming what is
    missing and what is there.
    """
    available = list(available)
    out: list[str] = []
    for t in parse_spec(spec):
        m = _LAST_RE.match(t)
        if m:
            n = int(m.group(1))
            layers = _layer_indices(available)
            if n < 1 or len(layers) < n:
                raise ConfigError(
                    f"feature {t!r} needs CLS groups of the last {n} blocks (cls_l<i>), found layers "
                    f"{layers or 'none'}; extract with layers={max(n, 1)} or use 'cls+pooled'"
                )
            last = layers[-n:]
            out += [f"cls_l{i}" for i in last]
            if not m.group(2):
                out.append(f"pooled_l{last[-1]}" if f"pooled_l{last[-1]}" in available else "pooled")
        else:
            out.append(t)
    missing = [g for g in out if g not in available]
    if missing:
        raise ConfigError(
            f"feature spec {spec!r} needs groups {missing} that are not available; available groups: "
            f"{sorted(available)}"
        )
    return out


def groups_for_spec(spec: str, depth: int) -> list[str]:
    """Groups to extract (for an encoder of ``depth`` blocks) so that ``spec`` can be resolved later."""
    out: list[str] = []
    for t in parse_spec(spec):
        m = _LAST_RE.match(t)
        if m:
            n = int(m.group(1))
            if not 1 <= n <= depth:
                raise ConfigError(f"feature {t!r}: n must be in 1..{depth} for this encoder, got {n}")
            out += [f"cls_l{i}" for i in range(depth - n, depth)]
            if not m.group(2):
                out.append("pooled")
        else:
            out.append(t)
    return list(dict.fromkeys(out))


def _reduce(a):
    """Average-pool one group batch: [n, D] as is; [n, R, C] -> mean over R; [n, C, h, w] -> mean over h, w."""
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        return a.mean(1)
    if a.ndim == 4:
        return a.mean((2, 3)) if isinstance(a, np.ndarray) else a.mean(dim=(2, 3))
    raise ConfigError(f"cannot pool a feature group of shape {tuple(a.shape)}; expected 2-D, 3-D or 4-D")


def _is_svgfeatures(obj) -> bool:
    return hasattr(obj, "group") and hasattr(obj, "layers") and hasattr(obj, "dino")


READ_CHUNK_BYTES = 64 << 20  # stored bytes read per block when filling the feature matrix


def _pooled_dim(shape) -> int:
    """Width of a group after :func:`_reduce`: [D] -> D, [R, C] -> C, [C, h, w] -> C."""
    shape = list(shape)
    if len(shape) not in (1, 2, 3):
        raise ConfigError(f"cannot pool a feature group of shape {shape}; expected 1-D, 2-D or 3-D rows")
    return int(shape[1] if len(shape) == 2 else shape[0])


def _from_cache(cache, spec: str, rows, progress: bool) -> FeatureMatrix:
    """Stream the groups of ``spec`` into one preallocated float32 [n, D] matrix (bounded extra memory:
    one block of ``READ_CHUNK_BYTES`` stored bytes at a time, never a whole group)."""
    groups = resolve_spec(spec, cache.groups)
    n = len(cache)
    sel = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    dims = [_pooled_dim(cache.groups[g]["shape"]) for g in groups]
    offs = np.cumsum([0] + dims)
    from ..cache.memory import check_budget

    check_budget(len(sel) * int(offs[-1]) * 4, f"the float32 feature matrix [{len(sel)}, {int(offs[-1])}] of "
                 f"{'+'.join(groups)}", getattr(cache, "memory_budget", None),
                 "use fewer rows or a smaller feature spec (e.g. 'cls')")
    X = np.empty((len(sel), int(offs[-1])), np.float32)
    contiguous = rows is None
    for g, a0, a1 in zip(groups, offs[:-1], offs[1:]):
        shape = cache.groups[g]["shape"]
        row_bytes = int(np.prod(shape)) * (2 if cache.groups[g].get("dtype") == "float16" else 4)
        bs = int(max(1, min(len(sel) or 1, READ_CHUNK_BYTES // max(row_bytes, 1))))
        starts = range(0, len(sel), bs)
        starts = progress_bar(starts, len(starts), progress, desc=f"reading {g}", unit="block")
        for s in starts:
            e = min(s + bs, len(sel))
            blk = cache.read(g, slice(s, e) if contiguous else sel[s:e])
            X[s:e, a0:a1] = _reduce(np.asarray(blk, dtype=np.float32)) if len(shape) > 1 else blk
            del blk
    y = np.asarray(cache.labels, dtype=np.int64)[sel]
    sids, vids = row_ids(cache)
    return FeatureMatrix(X, y, sids[sel], vids[sel], groups, spec)


def row_ids(cache) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, view_ids) int64 [n] of every cache row (rows are their own samples / view 0 when the
    cache does not record them); no feature is read."""
    n = len(cache)
    sids = getattr(cache, "sample_ids", None)
    vids = getattr(cache, "view_ids", None)
    sids = np.arange(n, dtype=np.int64) if sids is None else np.asarray(sids, dtype=np.int64)
    vids = np.zeros(n, np.int64) if vids is None else np.asarray(vids, dtype=np.int64)
    return sids, vids


def _from_group_source(get, names, spec: str, n_hint=None) -> tuple[object, list[str]]:
    groups = resolve_spec(spec, names)
    parts = []
    for g in groups:
        a = get(g)
        a = a.float() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)
        parts.append(_reduce(a))
    if isinstance(parts[0], torch.Tensor):
        return torch.cat([p.to(parts[0].device) for p in parts], dim=1), groups
    return np.concatenate(parts, axis=1), groups


def feature_matrix(X, y=None, *, features: str | None = DEFAULT_SPEC, rows=None, sample_ids=None,
                   view_ids=None, progress: bool = False) -> FeatureMatrix:
    """Coerce a head's input to a :class:`FeatureMatrix`.

    X: np.ndarray / torch.Tensor [n, D] (``features`` ignored), a FeatureCache (``features`` selects and
    pools groups; labels, sample_ids and view_ids come from the cache unless given), an SVGFeatures, or a
    dict {group: array [n, ...]} such as ``cache.to(device, groups)``. y: labels [n] or None.
    """
    if is_cache(X):
        fm = _from_cache(X, features or DEFAULT_SPEC, rows, progress)
        if y is not None:
            fm.y = as_labels(y, len(fm.X))
    else:
        if _is_svgfeatures(X):
            names = list(BASE_GROUPS) + [f"{p}_l{i}" for i in X.layers for p in ("cls", "pooled", "dino")]
            if X.residual is None:
                names.remove("residual")
            mat, groups = _from_group_source(X.group, names, features or DEFAULT_SPEC)
        elif isinstance(X, dict):
            mat, groups = _from_group_source(X.__getitem__, list(X), features or DEFAULT_SPEC)
        elif isinstance(X, (np.ndarray, torch.Tensor)):
            if X.ndim != 2:
                raise ConfigError(
                    f"expected a feature matrix of shape [n, D], got shape {tuple(X.shape)}; pool spatial "
                    "features first or pass a FeatureCache / SVGFeatures with a feature spec"
                )
            mat = X if isinstance(X, torch.Tensor) else np.asarray(X)
            if not (mat.dtype.is_floating_point if isinstance(mat, torch.Tensor)
                    else np.issubdtype(mat.dtype, np.floating)):
                mat = mat.float() if isinstance(mat, torch.Tensor) else mat.astype(np.float32)
            groups = []
        else:
            raise ConfigError(
                f"unsupported feature input of type {type(X).__name__}; expected a numpy array or torch tensor "
                "[n, D], a FeatureCache, an SVGFeatures or a dict of groups"
            )
        if rows is not None:
            mat = mat[torch.as_tensor(rows)] if isinstance(mat, torch.Tensor) else mat[np.asarray(rows)]
        n = len(mat)
        fm = FeatureMatrix(mat, None if y is None else as_labels(y, n), np.arange(n, dtype=np.int64),
                           np.zeros(n, np.int64), groups, features if groups else None)
    n = len(fm.X)
    if sample_ids is not None:
        fm.sample_ids = _ids(sample_ids, n, "sample_ids")
    if view_ids is not None:
        fm.view_ids = _ids(view_ids, n, "view_ids")
    if n == 0:
        raise ConfigError("received an empty feature matrix (0 rows)")
    return fm


def as_labels(y, n: int) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"labels must have shape [{n}] to match the features, got shape {y.shape}")
    return y


def _ids(a, n: int, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.int64)
    if a.shape != (n,):
        raise ConfigError(f"{name} must have shape [{n}] to match the features, got shape {a.shape}")
    return a


def eval_rows(sample_ids: np.ndarray, view_ids: np.ndarray) -> np.ndarray:
    """Rows to evaluate on: one per sample -- view 0 when present, else the sample's first row."""
    if (view_ids == 0).all():
        return np.arange(len(sample_ids))
    order = np.lexsort((np.arange(len(sample_ids)), view_ids != 0, sample_ids))
    first = np.ones(len(order), bool)
    first[1:] = sample_ids[order][1:] != sample_ids[order][:-1]
    return np.sort(order[first])


def to_numpy32(X) -> np.ndarray:
    """[n, D] array/tensor -> C-contiguous float32 numpy."""
    if isinstance(X, torch.Tensor):
        X = X.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(X, dtype=np.float32)


UNKNOWN_CLASS = -2


def check_same_transform(train, val) -> None:
    """CacheError naming both values when caches ``train`` and ``val`` hold features of different input
    resolutions (``--size``, or the image size of preset 'none'): those must not be mixed in one head. Presets
    may differ (a protocol's random-resized-crop train views with centre-crop val images at the same size)."""
    ta, tb = getattr(train, "transform", None) or {}, getattr(val, "transform", None) or {}
    diffs = [f"{k}: train {ta.get(k)!r}, val {tb.get(k)!r}" for k in ("size", "hw") if ta.get(k) != tb.get(k)]
    if diffs:
        raise CacheError(f"train cache {train.root} and val cache {val.root} were extracted at different input "
                         f"sizes ({'; '.join(diffs)}); extract both with the same --size")


def aligned_labels(train, val) -> np.ndarray:
    """Labels of cache ``val`` expressed in the class indices of ``train`` (a cache or a list of class
    names), matched by class name.

    Returns np.int64 [len(val)]: -1 where val is unlabelled, UNKNOWN_CLASS (-2) where the val class does
    not exist in train (always counted wrong). Without class names on both sides, labels are used as is.
    """
    y = np.asarray(val.labels, dtype=np.int64).copy()
    tc = list(train) if isinstance(train, (list, tuple)) else list(getattr(train, "classes", []) or [])
    vc = list(getattr(val, "classes", []) or [])
    if not tc or not vc or tc == vc:
        return y
    index = {c: i for i, c in enumerate(tc)}
    lut = np.array([index.get(c, UNKNOWN_CLASS) for c in vc], dtype=np.int64)
    ok = y >= 0
    y[ok] = lut[y[ok]]
    return y
