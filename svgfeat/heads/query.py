"""Where index vectors come from, and how queries are made comparable to them.

- :class:`ArraySource` / :class:`CacheSource`: the vectors an index is built from, read in batches (a cache is
  never loaded whole) with a seeded random sample for training and recall measurement.
- provenance: what an index records about its vectors (encoder spec, transform, group, cache) and the check that
  refuses queries from a different encoder / transform / group (:class:`~svgfeat.errors.CacheError`).
- :func:`encode_images`: image paths / PIL / bytes -> the index's feature group, with the index's transform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import CacheError, ConfigError, DataError
from ._base import is_cache  # noqa: F401  (one home for the cache check; re-exported for retrieval)
from .exact_search import as_float32

TRANSFORM_FIELDS = ("preset", "size", "crop_pct")


class ArraySource:
    """In-memory vectors ``[n, d]`` (numpy or torch, any device); keys are row numbers ``0..n-1``."""

    def __init__(self, X):
        self.X = as_float32(X, "X")
        self.n, self.d = self.X.shape
        self.keys = np.arange(self.n, dtype=np.int64)

    def batches(self, batch_size: int):
        for s in range(0, self.n, batch_size):
            yield self.keys[s:s + batch_size], self.X[s:s + batch_size]

    def sample(self, m: int, rng: np.random.Generator):
        keys = np.sort(rng.choice(self.n, size=min(m, self.n), replace=False)).astype(np.int64)
        return keys, self.X[keys]


class CacheSource:
    """One vector group of a feature cache, ``[n, C]`` (multi-axis non-spatial groups are flattened).

    Keys are cache row ids. Reading goes through ``cache.read`` / ``cache.iter_batches`` (memory-mapped)."""

    def __init__(self, cache, group: str):
        if group not in cache.groups:
            raise CacheError(f"group {group!r} is not in cache {cache.root} (it has: "
                             f"{', '.join(sorted(cache.groups))})")
        shape = list(cache.groups[group]["shape"])
        if len(shape) == 3:
            raise ConfigError(f"group {group!r} is a patch grid {shape}; a global index needs one vector per "
                              f"image (e.g. 'pooled' or 'cls'); use PatchIndex / `svgfeat index build --patch` "
                              f"for per-patch retrieval")
        self.cache, self.group = cache, group
        self.n, self.d = len(cache), int(np.prod(shape))
        if self.n == 0:
            raise CacheError(f"cache {cache.root} has no rows")

    def batches(self, batch_size: int):
        for rows, arrs in self.cache.iter_batches([self.group], batch_size=batch_size):
            yield rows.astype(np.int64), arrs[self.group].reshape(len(rows), -1).astype(np.float32)

    def sample(self, m: int, rng: np.random.Generator):
        rows = np.sort(rng.choice(self.n, size=min(m, self.n), replace=False)).astype(np.int64)
        return rows, self.cache.read(self.group, rows).reshape(len(rows), -1).astype(np.float32)


# ----------------------------------------------------------------------------- provenance
DIGEST_FIELDS = ("created", "num_rows", "groups", "encoder", "transform", "dataset_fingerprint")


def manifest_digest(manifest: dict) -> str:
    """sha256 of what names a cache's contents: its creation time, rows, groups, encoder, transform, dataset
    fingerprint and every shard's file, rows and sha256. A rebuilt cache gets a new digest; metadata added later
    (statistics, verification) does not change it."""
    import hashlib
    import json

    shards = [[s.get("file"), s.get("rows"), s.get("sha256")] for s in manifest.get("shards") or []
              if isinstance(s, dict)]
    body = {f: manifest.get(f) for f in DIGEST_FIELDS}
    body["shards"] = shards
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_source_current(prov: dict | None, index_path, patch: bool = False) -> None:
    """Refuse an index whose source cache was rebuilt since (its manifest digest differs from the one recorded):
    its ids would name other images. A source that is gone or unreadable, or an index without a recorded
    digest (arrays, older svgfeat), cannot be checked and passes."""
    from ..cache.manifest import read_manifest

    want = (prov or {}).get("cache_digest")
    root = (prov or {}).get("cache")
    if not isinstance(want, str) or not isinstance(root, str) or not (Path(root) / "manifest.json").is_file():
        return
    try:
        got = manifest_digest(read_manifest(root, validate=False))
    except CacheError:
        return
    if got != want:
        raise CacheError(f"{index_path}: stale index: its source cache {root} was rebuilt after the index was built "
                         f"(manifest digest {want[:12]} now {got[:12]}), so its ids would name other images; rebuild "
                         f"it with `svgfeat index build {root} -o {index_path}{' --patch' if patch else ''} ...`")


def cache_provenance(cache, group: str) -> dict:
    """What an index built from ``cache``/``group`` records: encoder spec, transform, group, cache + dataset,
    and the cache's manifest digest (:func:`manifest_digest`), so a rebuilt source is noticed."""
    ds = cache.manifest.get("dataset", {})
    return {"encoder": dict(cache.encoder_spec), "transform": dict(cache.transform), "group": group,
            "cache": str(cache.root), "cache_digest": manifest_digest(cache.manifest),
            "cache_created": cache.manifest.get("created"),
            "dataset_root": ds.get("root"), "dataset_fingerprint": cache.manifest.get("dataset_fingerprint"),
            "alignment": cache.manifest.get("alignment"), "numerics": cache.manifest.get("numerics"),
            "weights": {"provenance": cache.manifest.get("provenance"), "request": cache.manifest.get("weights")}}


def encoder_provenance(encoder) -> dict:
    from ..extraction import encoder_spec

    return encoder_spec(encoder)


def check_provenance(index_prov: dict | None, *, encoder: dict | None = None, transform: dict | None = None,
                     group: str | None = None, what: str = "query") -> None:
    """Raise CacheError naming every field in which a query's provenance differs from the index's.

    An index built from plain arrays without provenance accepts anything (only the dimension is checked)."""
    if not index_prov or not index_prov.get("encoder"):
        return
    diffs = []
    if encoder is not None:
        from ..cache import check_compatible

        try:
            check_compatible(index_prov["encoder"], encoder, what="encoder")
        except CacheError as e:
            diffs.append(str(e).replace("cache has", "index has").replace("requested", f"{what} has"))
    if transform is not None:
        for f in TRANSFORM_FIELDS:
            a, b = (index_prov.get("transform") or {}).get(f), transform.get(f)
            if a != b:
                diffs.append(f"transform.{f}: index has {a!r}, {what} has {b!r}")
    if group is not None and index_prov.get("group") != group:
        diffs.append(f"group: index has {index_prov.get('group')!r}, {what} has {group!r}")
    if diffs:
        raise CacheError(f"{what} provenance does not match the index ({index_prov.get('cache') or 'arrays'}): "
                         + "; ".join(diffs))


def check_encoder(index_prov: dict | None, encoder) -> None:
    """Refuse an encoder whose spec differs from the index's. A ``fixed``-alignment encoder without statistics
    adopts the ones stored with the index (as ``svgfeat.extract`` does with an existing cache)."""
    spec = (index_prov or {}).get("encoder") or {}
    align = getattr(encoder, "align", None)
    if spec.get("fixed_stats") and getattr(encoder, "alignment", None) == "fixed" and not align.has_fixed_stats:
        align.set_fixed_stats(spec["fixed_stats"])
    check_provenance(index_prov, encoder=encoder_provenance(encoder), what="encoder")


_OPTION = {"dinov3": "--dinov3 PATH", "svg": "--svg PATH", "svg_config": "--svg-config YAML"}
_WHAT = {"dinov3": "DINOv3 weights", "svg": "SVG checkpoint", "svg_config": "SVG config"}


def _recorded_weights(index_prov: dict) -> dict:
    """{"provenance": the cache's weight provenance (paths, sha256, Hub repo), "request": its ``weights``
    block}: recorded with the index, or read from its source cache's manifest for older indexes."""
    rec = index_prov.get("weights")
    if isinstance(rec, dict):
        return rec
    from ..cache import read_manifest

    try:
        m = read_manifest(index_prov.get("cache") or "", validate=False)
    except (CacheError, OSError):
        return {}
    return {"provenance": m.get("provenance"), "request": m.get("weights")}


def _file_with_sha(path, sha) -> bool:
    from ..checkpoints import sha256_file

    try:
        return bool(path) and Path(path).is_file() and (sha is None or sha256_file(path) == sha)
    except OSError:
        return False


def encoder_args_from_provenance(index_prov: dict | None, dinov3=None, svg=None, svg_config=None,
                                 model=None) -> dict:
    """The ``load_encoder`` arguments that rebuild the encoder an index's vectors came from.

    Options given win; every weight file left out is taken from the provenance its source cache recorded
    (the file's path, when it still holds the recorded sha256: given before, or in the Hugging Face cache).
    ConfigError naming exactly which option to add when a needed file cannot be found."""
    given = {"dinov3": dinov3, "svg": svg, "svg_config": svg_config, "model": model}
    spec = (index_prov or {}).get("encoder") or {}
    if not spec:
        raise ConfigError("the index records no encoder (built from plain arrays): image queries cannot be "
                          "encoded; query cache rows (CACHE:ROW) instead")
    if spec.get("external"):
        raise ConfigError(f"the index was built from external features ({spec.get('model')!r}): svgfeat cannot "
                          "encode image queries for it; query cache rows (CACHE:ROW) instead")
    from ..hub import is_hub_spec

    if any(is_hub_spec(v) for v in given.values()):
        return given  # --pretrained / hf://: the Hub files, checked against the index after loading
    rec = _recorded_weights(index_prov)
    prov, req = rec.get("provenance") or {}, rec.get("request") or {}
    args, missing = dict(given), []
    for role in ("dinov3", "svg"):
        want = spec.get(f"{role}_sha256")
        if args[role] is None and want is not None:
            path = (prov.get(role) or {}).get("path")
            if _file_with_sha(path, want):
                args[role] = path
            else:
                missing.append((role, want))
    want_cfg = req.get("svg_config_sha256")
    if args["svg_config"] is None and want_cfg is not None:
        path = (prov.get("svg_config") or {}).get("path")
        if _file_with_sha(path, want_cfg):
            args["svg_config"] = path
        else:
            missing.append(("svg_config", want_cfg))
    if args["model"] is None:
        if req.get("model"):
            args["model"] = req["model"]
        elif spec.get("dinov3_sha256") is None and spec.get("svg_sha256") is None:
            args["model"] = spec.get("model")  # a registered (seeded) model without weight files
    if missing:
        need = "; ".join(f"the {_WHAT[r]} (sha256 {str(h)[:12]}...)" for r, h in missing)
        add = " ".join(_OPTION[r] for r, _ in missing)
        raise ConfigError(f"the index's encoder ({spec.get('model')!r}) needs {need}, which is not where its cache "
                          f"recorded it: add {add}" + (" (or --pretrained for the released files)"
                                                       if spec.get("family") in ("svg", None) else ""))
    return args


def check_cache_query(index_prov: dict | None, cache, group: str) -> None:
    check_provenance(index_prov, encoder=cache.encoder_spec, transform=cache.transform, group=group,
                     what=f"cache {cache.root}")


# ----------------------------------------------------------------------------- encoding queries
def load_query_image(src):
    """Path / bytes / PIL image -> RGB PIL image (DecodeError on undecodable input)."""
    from PIL import Image

    from ..data.decode import load_image, to_rgb

    if isinstance(src, Image.Image):
        return to_rgb(src)
    if isinstance(src, (str, Path, bytes, bytearray)):
        return load_image(src)
    raise DataError(f"query image: expected a path, bytes or a PIL image, got {type(src).__name__}")


@torch.no_grad()
def encode_images(encoder, images, transform: dict, group: str, device=None, batch_size: int = 32) -> np.ndarray:
    """Encode query images exactly like ``svgfeat.extract`` (view 0 of ``transform``) and return ``group``:
    float32 ``[B, *group_shape]`` (``[B, C]`` for pooled/cls, ``[B, C, h, w]`` for dino/latent)."""
    from ..data.transforms import Transform
    from ..models.svg import layers_needed

    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise DataError("no query images given")
    t = Transform(transform.get("preset", "svg"), int(transform.get("size", 256)),
                  float(transform.get("crop_pct", 0.875)))
    if device is None:
        device = next(encoder.parameters()).device
    layers = layers_needed([group]) or None
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.stack([t(load_query_image(im)) for im in images[s:s + batch_size]]).to(device)
        f = encoder.encode(x, layers=layers)
        out.append(f.group(group).float().cpu().numpy())
    return np.concatenate(out)
