"""One query front-end for the CLI and the HTTP service: image / indexed row / ``CACHE:ROW`` -> result dicts."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ..errors import CacheError, ConfigError, DataError
from ..heads.patch_retrieval import PatchIndex, load_any
from ..heads.query import check_encoder, encoder_args_from_provenance
from ..numerics import Numerics

_CACHE_ROW = re.compile(r"^(?P<cache>.+):(?P<row>-?[0-9]{1,18})$")  # ASCII digits, bounded: int() never fails


def parse_query(q: str) -> tuple:
    """``"img.png"`` -> ("image", path); ``"CACHE:ROW"`` -> ("cache", cache_dir, row)."""
    try:
        if Path(q).is_file():
            return ("image", q)
        m = _CACHE_ROW.match(q)
        is_cache = bool(m) and Path(m.group("cache")).is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        m, is_cache = None, False
    if is_cache:
        return ("cache", m.group("cache"), int(m.group("row")))
    raise DataError(f"query {q!r} is neither an image file nor CACHE:ROW (a feature cache directory and a row "
                    "number, e.g. ./cache:12)")


def parse_region(text: str | None):
    """``"r0:r1,c0:c1"`` -> (r0, r1, c0, c1) half-open patch-grid bounds; None -> None (whole grid)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ConfigError(f"region must be a string ROW0:ROW1,COL0:COL1, got {type(text).__name__}")
    m = re.fullmatch(r"\s*([0-9]{1,9}):([0-9]{1,9})\s*,\s*([0-9]{1,9}):([0-9]{1,9})\s*", text)
    if not m:
        raise ConfigError(f"region {text[:60]!r}: expected ROW0:ROW1,COL0:COL1 in patch-grid units, e.g. 0:4,2:6")
    return tuple(int(v) for v in m.groups())


def index_encoder(index_prov, dinov3=None, svg=None, svg_config=None, model=None, alignment="batch",
                  device="cpu"):
    """The encoder an index's vectors came from: options given here, the rest from the weight files its
    source cache recorded (:func:`~svgfeat.heads.query.encoder_args_from_provenance`); ConfigError naming
    the option to add when one is missing. Its spec is checked against the index by :class:`SearchService`."""
    from ..models.build import load_encoder

    args = encoder_args_from_provenance(index_prov, dinov3, svg, svg_config, model)
    align = ((index_prov or {}).get("encoder") or {}).get("alignment") or alignment
    return load_encoder(**args, alignment=align if alignment == "batch" else alignment, device=device)


def _query_numerics(index_prov: dict | None, device) -> Numerics:
    """The cache's extraction precision on ``device`` (fp32 for an older index, or where the device cannot
    run it: a query differs from its cache row by round-off only)."""
    from ..errors import ConfigError

    precision = (((index_prov or {}).get("numerics") or {}).get("precision")) or "fp32"
    try:
        return Numerics.for_device(device, precision)
    except ConfigError:
        return Numerics.for_device(device)


class SearchService:
    """Answers queries against one index (global :class:`FaissIndex` or :class:`PatchIndex`).

    ``encoder`` (optional) encodes image queries; its spec must match the index provenance (checked here)."""

    def __init__(self, index, encoder=None, device="cpu", numerics: Numerics | None = None):
        if isinstance(index, (str, Path)):
            index = load_any(index, device=device)
        # image queries are encoded under it: by default the precision the index's cache was extracted in
        self.numerics = numerics or _query_numerics((index.index_ if isinstance(index, PatchIndex) else index)
                                                    .provenance_, device)
        self.index, self.encoder, self.device = index, encoder, device
        self.patch = isinstance(index, PatchIndex)
        self.flat = index.index_ if self.patch else index
        self._lock = threading.Lock()
        if encoder is not None:
            check_encoder(self.flat.provenance_, encoder)

    @property
    def meta(self) -> dict:
        return self.flat.meta_

    def info(self) -> dict:
        out = self.index.info()
        out["encoder_loaded"] = self.encoder is not None
        out["numerics"] = self.numerics.record()
        return out

    def _results(self, D=None, nbr=None, hits=None) -> list[dict]:
        if hits is not None:
            return [h.to_dict() for h in hits]
        return self.flat.describe(D, nbr)[0]

    def by_image(self, image, k: int = 10, region=None, aggregate: str = "max") -> list[dict]:
        """``image``: path, bytes or PIL image. ``region``/``aggregate`` apply to patch indexes."""
        if self.encoder is None:
            enc = (self.flat.provenance_ or {}).get("encoder") or {}
            try:
                encoder_args_from_provenance(self.flat.provenance_)
                why = ("it was not loaded: pass --model/--dinov3/--svg, or start `svgfeat serve` without them to "
                       "rebuild it from the weight files the index's cache recorded")
            except ConfigError as e:
                why = str(e)
            raise ConfigError(f"image queries are encoded on the fly and need the index's encoder "
                              f"(model {enc.get('model')!r}): {why}")
        with self._lock, self.numerics.autocast():
            if self.patch:
                return self._results(hits=self.index.search_images(image, self.encoder, region, k,
                                                                    device=self.device, aggregate=aggregate))
            D, nbr = self.index.search_images([image], self.encoder, k, device=self.device)
        return self._results(D, nbr)

    def by_cache_row(self, cache, row: int, k: int = 10, region=None, aggregate: str = "max") -> list[dict]:
        from ..cache import open_cache

        cache = open_cache(cache)
        if not -len(cache) <= row < len(cache):
            raise DataError(f"row {row} is out of range for cache {cache.root} ({len(cache)} rows)")
        if self.patch:
            return self._results(hits=self.index.search_cache(cache, row, region, k, aggregate=aggregate))
        D, nbr = self.index.search_cache(cache, [row], k)
        return self._results(D, nbr)

    def by_row(self, row: int, k: int = 10, region=None, aggregate: str = "max") -> list[dict]:
        """Query with row ``row`` of the cache the index was built from."""
        src = (self.flat.provenance_ or {}).get("cache")
        if not src or not Path(src).is_dir():
            raise CacheError(f"row queries read the index's source cache, which is not available ({src!r})")
        return self.by_cache_row(src, row, k, region, aggregate)

    def query(self, q: str, k: int = 10, region=None, aggregate: str = "max") -> list[dict]:
        """A CLI query string: an image path or ``CACHE:ROW``."""
        parsed = parse_query(q)
        if parsed[0] == "image":
            return self.by_image(parsed[1], k, region, aggregate)
        return self.by_cache_row(parsed[1], parsed[2], k, region, aggregate)
