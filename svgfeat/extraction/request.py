"""The extraction request: validated options and the manifest block an existing cache must match.

A request is everything that decides the cached numbers: transform (and decoder), groups with their
shapes/dtypes, storage dtype, views, dataset fingerprint, shard size, alignment, the encoder (weights,
family/stage) and the numerics (``precision``). The device type and torch/timm versions are recorded too
(``numerics``), but only ``precision`` is refused on a change (fp32 on CPU and GPU agree to round-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cache.manifest import request_diff
from ..cache.shards import DTYPES
from ..data.gpu_decode import RESAMPLE_TAG
from ..data.transforms import Transform
from ..errors import CacheError, ConfigError
from ..models.svg import BASE_GROUPS, layers_needed
from ..numerics import Numerics

DEFAULT_GROUPS = ("latent", "cls", "pooled")
PRECISIONS = ("fp32", "bf16")
GPU_RESAMPLE = RESAMPLE_TAG  # device decoder arithmetic (see data/gpu_decode.py); part of the transform spec


@dataclass(frozen=True)
class Options:
    """Validated knobs of one extraction (what ``extract()`` takes besides data, out and the encoder)."""

    groups: tuple = DEFAULT_GROUPS
    size: int = 256
    preset: str = "svg"
    dtype: str = "fp16"
    alignment: str = "batch"
    batch_size: int = 64
    shard_size: int = 1024
    workers: int = 0
    device: str = "cpu"
    limit: int | None = None
    views: int = 1
    view_seed: int = 0
    fixed_stats_limit: int | None = None
    precision: str = "fp32"
    fast_jpeg: bool = False
    gpu_decode: bool = False
    compile: bool = False  # throughput knobs: recorded (throughput_record), never compared on reuse
    channels_last: bool | None = None  # None: on CUDA only
    prefetch: int = 4
    hash_sources: bool = False  # per-item content hashes besides size + mtime (how sources are checked)
    expect_hw: tuple | None = None  # set by the engine for preset 'none' (the first image's size)

    @property
    def numerics(self) -> Numerics:
        """The run's numerics (checked against this machine: ``cuda`` without CUDA is refused here)."""
        return Numerics.for_device(self.device, self.precision, compile=self.compile)

    def __post_init__(self):
        def whole(name, v, lo):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name.replace('_', '-')} {v!r}: expected an integer >= {lo}")

        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: expected one of {sorted(DTYPES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        Numerics.for_device(self.device, self.precision)  # the device exists here and runs this precision, or one ConfigError now, before any write
        if self.alignment not in ("batch", "fixed"):
            raise ConfigError(f"alignment {self.alignment!r}: expected batch or fixed")
        for name in ("batch_size", "shard_size", "views"):
            whole(name, getattr(self, name), 1)
        whole("workers", self.workers, 0)
        whole("prefetch", self.prefetch, 1)
        whole("view_seed", self.view_seed, 0)
        if self.limit is not None:
            whole("limit", self.limit, 1)
        if self.fixed_stats_limit is not None:
            whole("fixed_stats_limit", self.fixed_stats_limit, 1)
        if self.gpu_decode and self.views != 1:
            raise ConfigError(f"gpu_decode supports views=1 only, got views={self.views}")
        if self.gpu_decode and self.preset not in ("svg", "center-crop", "resize"):
            raise ConfigError(f"gpu_decode reproduces the deterministic presets svg, center-crop and resize; "
                              f"got preset {self.preset!r} (decode it on the workers instead)")
        if self.gpu_decode and self.fast_jpeg:
            raise ConfigError("fast_jpeg (reduced-DCT PIL decoding) and gpu_decode exclude each other; pick one")
        try:
            Transform(self.preset, self.size)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def transform(self) -> Transform:
        return Transform(self.preset, self.size)

    @property
    def draft(self):
        """What the loader workers do: 'bytes' (device decoding), a PIL draft size, or None (full decode)."""
        return "bytes" if self.gpu_decode else (self.size if self.fast_jpeg else None)


def validate_groups(groups, enc=None) -> list[str]:
    groups = [g.strip() for g in (groups.split(",") if isinstance(groups, str) else groups) if g.strip()]
    if not groups:
        raise ConfigError("no feature groups requested")
    for g in groups:
        ok = g in BASE_GROUPS or g == "residual_raw" or any(
            g.startswith(p) and g[len(p):].isdigit() for p in ("cls_l", "pooled_l", "dino_l"))
        if not ok:
            raise ConfigError(f"unknown group {g!r}; expected {', '.join(BASE_GROUPS)}, residual_raw, "
                              "cls_l<i>, pooled_l<i> or dino_l<i>")
        if enc is not None and enc.residual is None and g in ("residual", "residual_raw"):
            raise ConfigError(f"group {g!r} needs an SVG checkpoint (--svg); this encoder is DINOv3-only")
    if enc is not None:
        bad = [i for i in layers_needed(groups) if i >= enc.backbone.depth]
        if bad:
            raise ConfigError(f"layer(s) {bad} do not exist in a {enc.backbone.depth}-block backbone")
    return list(dict.fromkeys(groups))


def encoder_spec(enc) -> dict:
    """The encoder fields a cache records and checks: model, weight sha256s, alignment, channels, and the
    autoencoder family/stage when the encoder exposes them."""
    prov = enc.provenance or {}
    fixed = enc.align.fixed_stats_dict() if enc.alignment == "fixed" and enc.align.has_fixed_stats else None
    return {"model": enc.config.get("name", "custom"),
            "dinov3_sha256": (prov.get("dinov3") or {}).get("sha256"),
            "svg_sha256": (prov.get("svg") or {}).get("sha256"),
            "alignment": enc.alignment, "fixed_stats": fixed,
            "family": getattr(enc, "family", "svg"), "stage": getattr(enc, "stage", None),
            "latent_channels": enc.latent_channels, "embed_dim": enc.embed_dim, "patch_size": enc.patch_size}


def numerics(device, precision) -> dict:
    """Recorded with every cache: how the numbers were computed (only ``precision`` must match on resume);
    the record of the one :class:`~svgfeat.numerics.Numerics` object (``precision`` may already be one)."""
    if isinstance(precision, Numerics):
        return precision.record()
    return Numerics.for_device(device, precision).record()


def throughput_record(opts: Options, encoding) -> dict:
    """The manifest's ``throughput`` block: knobs that change speed, not the request (fp32 compile and
    eager agree within 1e-5; they are recorded so a reader knows what ran)."""
    return {"compile": encoding.compiled, "channels_last": encoding.channels_last,
            "cudnn_benchmark": encoding.cudnn_benchmark, "prefetch": opts.prefetch, "workers": opts.workers,
            "staging": "pinned ring" if encoding.cuda else "none (cpu)"}


def base_request(ds, n_items: int, opts: Options) -> dict:
    """The request block known before the encoder runs (``groups``/``encoder`` are filled in later)."""
    fingerprint = ds.fingerprint() if n_items == len(ds) else f"{ds.fingerprint()}[:{n_items}]"
    tspec = dict(opts.transform.spec(), fast_jpeg=bool(opts.fast_jpeg),
                 decoder="device" if opts.gpu_decode else "pil")
    if opts.gpu_decode:
        tspec["resample"] = GPU_RESAMPLE
    return {"transform": tspec, "groups": None, "dtype": opts.dtype, "views": opts.views,
            "dataset_fingerprint": fingerprint, "shard_size": opts.shard_size, "alignment": opts.alignment,
            "precision": opts.precision}


def requested_weights(model, dinov3, svg, svg_config) -> dict | None:
    """The encoder as requested, before anything is built: the model name and the sha256 of every weight
    file (Hub specs resolved to their cached files, as :func:`~svgfeat.models.svg.load_encoder` does).

    Recorded in the manifest as ``weights``; a complete cache is reused without building the encoder only
    when this block is exactly equal (None included). None when a local file is missing or not a regular
    file (the encoder is then built, which reports the real problem); a Hub file that cannot be fetched
    raises the loader's error here (once, not again when building)."""
    from ..checkpoints import sha256_file
    from ..hub import is_hub_spec, resolve

    specs = {"dinov3": dinov3, "svg": svg, "svg_config": svg_config}
    hub = any(is_hub_spec(v) for v in specs.values())
    out = {"model": None if hub else model}
    try:
        for role, v in specs.items():
            if hub:
                v, _ = resolve(v, model or "svg_vits16plus", role)
            if v is not None and not Path(v).is_file():
                return None
            out[f"{role}_sha256"] = sha256_file(v) if v is not None else None
    except OSError:
        return None
    return out


def differences(existing: dict, request: dict) -> list[str]:
    """Readable differences between an existing cache and a request (every field that decides the numbers:
    the encoder's name, family and every weight sha256, transform, groups, dtype, views, source fingerprint
    (which includes the limit), shard size and precision)."""
    diffs = request_diff(existing, request)
    if existing.get("precision") != request.get("precision"):
        diffs.append(f"precision: cache has {existing.get('precision')!r}, requested {request.get('precision')!r}")
    a, b = existing.get("weights"), request.get("weights")
    if isinstance(a, dict) and isinstance(b, dict) and a.get("svg_config_sha256") != b.get("svg_config_sha256"):
        diffs.append(f"svg_config sha256: cache has {a.get('svg_config_sha256')!r}, requested "
                     f"{b.get('svg_config_sha256')!r}")
    return diffs


def refuse_mismatch(out: Path, existing: dict, request: dict) -> None:
    diffs = differences(existing, request)
    if diffs:
        raise CacheError(f"{out} holds a different extraction; refusing to mix ({'; '.join(diffs)}). "
                         "Use another output directory or --overwrite.")


def _same_weights(m: dict, w: dict) -> bool:
    """The cache's recorded ``weights`` block equals ``w``. A cache without one (made from an encoder object,
    or by an older svgfeat) matches only a registered model requested by name with the same weight sha256s
    (None included) and no svg config: an encoder spec never stands in for an unnamed request."""
    if isinstance(m.get("weights"), dict):
        return m["weights"] == w
    e = m["encoder"]
    return w["model"] is not None and w["model"] == e.get("model") and w.get("svg_config_sha256") is None and all(
        e.get(k) == w.get(k) for k in ("dinov3_sha256", "svg_sha256"))


def light_match(m: dict, request: dict) -> bool:
    """True when manifest ``m`` is a complete cache of exactly the requested encoder (``request["weights"]``:
    the same model name and weight sha256s, None included) and the same transform/groups/dataset/limit/
    precision, checked without building the encoder. False sends the run to the full check."""
    if not m.get("complete") or not isinstance(m.get("encoder"), dict):
        return False
    w = request.get("weights")
    if not isinstance(w, dict) or not _same_weights(m, w):
        return False
    fields = ("transform", "groups", "dtype", "views", "dataset_fingerprint", "shard_size", "precision")
    return m["encoder"].get("alignment") in (request["alignment"], None) and all(
        m.get(f) == request[f] for f in fields)
