"""The JSON sidecar ``INDEX.json`` of a saved index: reading it, and refusing one whose fields have the wrong types
(one line naming the field, what it holds and what is expected) before anything trusts them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import CacheError
from ..regular_files import read_text

SIDECAR_FORMAT = "svgfeat-index"
METRICS = ("cosine", "l2", "ip")


def _is_int(v, lo=0) -> bool:
    return type(v) is int and v >= lo


def _is_num(v) -> bool:
    return type(v) in (int, float) and np.isfinite(v)


def _opt(check):
    return lambda v: v is None or check(v)


_PLAIN_NAME = re.compile(r"[^/\\]+")
SIDECAR_TYPES = {  # field -> (check, what is expected)
    "factory": (lambda v: isinstance(v, str) and v.strip() != "", "a faiss factory string"),
    "metric": (lambda v: v in METRICS, f"one of {', '.join(METRICS)}"),
    "dim": (lambda v: _is_int(v, 1), "a positive integer"),
    "ntotal": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "backend": (lambda v: v in ("faiss", "torch"), "'faiss' or 'torch'"),
    "keys": (lambda v: v == "range" or (isinstance(v, str) and _PLAIN_NAME.fullmatch(v) is not None
                                        and v not in (".", "..")), "'range' or a file name beside the index"),
    "kind": (lambda v: v in ("global", "patch"), "'global' or 'patch'"),
    "params": (lambda v: isinstance(v, dict), "an object"),
    "meta": (lambda v: isinstance(v, dict), "an object"),
    "provenance": (_opt(lambda v: isinstance(v, dict)), "an object or null"),
    "recall": (_opt(lambda v: isinstance(v, dict)), "an object or null"),
    "search_params": (lambda v: isinstance(v, dict) and all(_is_int(x, 1) for x in v.values()),
                      "an object of positive integers"),
    "build_seconds": (_opt(_is_num), "a number"),
    "patch": (lambda v: isinstance(v, dict) and isinstance(v.get("grid"), list) and len(v["grid"]) == 2
              and all(_is_int(g, 1) for g in v["grid"]) and _is_int(v.get("rows"), 0), "{grid: [h, w], rows}"),
    "patch_params": (lambda v: isinstance(v, dict), "an object"),
}
PARAM_TYPES = {  # hyper-parameters restored from the sidecar's "params"
    "nprobe": (_opt(lambda v: _is_int(v, 1)), "a positive integer or null"),
    "ef_search": (_opt(lambda v: _is_int(v, 1)), "a positive integer or null"),
    "factory": (lambda v: isinstance(v, str), "a string"),
    "metric": (lambda v: v in METRICS, f"one of {', '.join(METRICS)}"),
    "group": (lambda v: isinstance(v, str), "a string"),
    "max_memory": (_opt(lambda v: isinstance(v, str) or _is_int(v, 1)), "a size or null"),
    "train_size": (_opt(lambda v: _is_int(v, 1)), "a positive integer or null"),
    "seed": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "measure_recall": (_opt(lambda v: isinstance(v, bool)), "true, false or null"),
    "recall_queries": (lambda v: _is_int(v, 1), "a positive integer"),
    "recall_k": (lambda v: _is_int(v, 1), "a positive integer"),
    "batch_size": (lambda v: _is_int(v, 1), "a positive integer"),
    "backend": (lambda v: v in ("auto", "faiss", "torch"), "'auto', 'faiss' or 'torch'"),
    "target_recall": (_opt(lambda v: _is_num(v) and 0 < v <= 1), "a number in (0, 1] or null"),
    "time_budget": (_opt(lambda v: _is_num(v) and v >= 0), "a number of seconds or null"),
    "progress": (lambda v: isinstance(v, bool), "true or false"),
}


def _type_problem(side: dict, side_path) -> str | None:
    for field, (ok, what) in SIDECAR_TYPES.items():
        if field in side and not ok(side[field]):
            return f"{side_path}: index sidecar field {field!r} is {str(side[field])[:60]!r}, expected {what}"
    for field, (ok, what) in PARAM_TYPES.items():
        params = side.get("params") or {}
        if field in params and not ok(params[field]):
            return (f"{side_path}: index sidecar field 'params.{field}' is {str(params[field])[:60]!r}, "
                    f"expected {what}")
    return None


def read_sidecar(path) -> dict:
    """The JSON sidecar of an index file (CacheError if missing, not an svgfeat index, or a field has the wrong
    type: one line naming the field, what it holds and what is expected)."""
    path = Path(path)
    side_path = path.with_name(path.name + ".json")
    if not path.exists() or not side_path.exists():
        missing = path if not path.exists() else side_path
        raise CacheError(f"index not found: {missing} (build one with `svgfeat index build CACHE -o {path}`)")
    try:
        side = json.loads(read_text(side_path, "index sidecar", error=CacheError))  # regular file, bounded
    except (json.JSONDecodeError, RecursionError) as e:
        raise CacheError(f"{side_path}: corrupt index sidecar: {e}") from None
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        got = side.get("format") if isinstance(side, dict) else type(side).__name__
        raise CacheError(f"{side_path}: not an svgfeat index sidecar (format={got!r})")
    missing = [k for k in ("factory", "metric", "dim", "ntotal", "backend") if k not in side]
    if missing:
        raise CacheError(f"{side_path}: index sidecar lacks {missing}; rebuild it with `svgfeat index build`")
    problem = _type_problem(side, side_path)
    if problem:
        raise CacheError(problem + "; rebuild the index with `svgfeat index build`")
    return side
