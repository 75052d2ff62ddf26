"""Named evaluation protocols -- the one place they are defined, as data: ImageNet linear probe / kNN
(``svgfeat eval imagenet``) and the dense linear protocols (ADE20K segmentation, NYUv2 depth: ``svgfeat seg`` /
``svgfeat depth``, :mod:`svgfeat.evaluation.dense`; the mmseg configs under ``svgfeat/configs/mmseg`` state
the same numbers and a test holds them equal).

A :class:`Protocol` fixes everything that changes a number: train/val transforms and the number of
cached train views, the probe's features, grid, schedule, normalisation and selection, and the kNN's
features, ks and temperature. :func:`resolve` merges user overrides into a protocol and returns every
setting that differs from it as a *deviation*; results.json / results.md list them, together with
deviations of the data and run (sample data instead of ImageNet-1K, ``--limit``, random weights,
a clamped batch size).

- ``dinov3``: DINOv3's linear probe and kNN (``dinov3/eval/linear.py``, ``eval/knn.py``,
  ``data/transforms.py``): train views are random-resized crops 224 (scale 0.08-1, bicubic) + flip,
  val is resize 256 -> centre crop 224; [CLS, mean patch] features; 13 lrs 1e-5..0.1 scaled by
  batch/256, SGD momentum 0.9, no weight decay, cosine over 12,500 iterations at batch 1024 (10 epochs of
  1,250); raw features; best head selected ON VAL; kNN on CLS with k in {10, 20, 100, 200}, T = 0.07,
  with train and val both through the eval transform.
- ``svg``: the SVG paper's ImageNet-1K linear probe as far as ``SVG_REFERENCE.md`` §4 documents it: the
  paper gives only the numbers (SVG 81.80 / 95.87, its DINOv3 baseline 81.71 / 95.79); the protocol is
  the reference's best reading (DINOv3's codebase on average-pooled 392-d SVG features). ``unknown``
  lists what is not documented.
- ``svgfeat`` (default): our protocol, chosen so the number is unbiased: ADM centre crop 256 (the SVG
  encoder's own input), one view, [CLS, mean patch] and the pooled 392-d latent, z-scored features,
  the head selected on a held-out 10% of train (never on val), kNN on CLS; everything recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from ..heads._base import DINOV3_KS, DINOV3_LRS


@dataclass(frozen=True)
class Protocol:
    """One named protocol. ``settings`` are the keys :func:`resolve` compares; ``unknown`` lists what the
    sources do not document (the chosen value is a reading, not a fact); ``inherent`` lists differences
    every cached run has from the original (e.g. a fixed set of K views instead of fresh crops)."""

    name: str
    summary: str
    source: str
    settings: dict
    unknown: tuple = ()
    inherent: tuple = ()
    reference_numbers: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return asdict(self)


_DINOV3_PROBE = dict(lrs=DINOV3_LRS, weight_decays=(0.0,), optimizer="sgd", probe_batch_size=1024,
                     iterations=12500, epochs=10, min_iterations=0, schedule="cosine")

PROTOCOLS = {
    "dinov3": Protocol(
        name="dinov3",
        summary="DINOv3 linear probe + kNN: RRC-224+flip train views, resize 256 -> centre crop 224 val, "
                "13-lr SGD grid, 12,500 cosine steps at batch 1024, raw features, selection ON VAL, "
                "kNN on CLS (k 10/20/100/200, T 0.07)",
        source="facebookresearch/dinov3 eval/linear.py, eval/knn.py, data/transforms.py "
               "(make_classification_train/eval_transform); SVG_REFERENCE.md §4",
        settings=dict(train_preset="rrc", train_size=224, train_views=10, val_preset="center-crop", val_size=224,
                      features=("cls+pooled",), knn_features="cls", knn_k=DINOV3_KS, temperature=0.07,
                      knn_train="eval-transform", normalize="none", select_on="val", heldout_fraction=0.1,
                      **_DINOV3_PROBE),
        inherent=("train views are K crops cached once per image (DINOv3 draws a fresh random-resized crop "
                  "at every step); each epoch uses one of the K views per image, drawn at random",),
    ),
    "svg": Protocol(
        name="svg",
        summary="SVG paper (arXiv 2510.15301) ImageNet-1K linear probe, as read from SVG_REFERENCE.md §4: "
                "DINOv3's probe codebase on average-pooled 392-d SVG latents",
        source="SVG_REFERENCE.md §4 (paper table via the project page; protocol not in any readable file)",
        settings=dict(train_preset="rrc", train_size=224, train_views=10, val_preset="center-crop", val_size=224,
                      features=("latent",), knn_features="latent", knn_k=DINOV3_KS, temperature=0.07,
                      knn_train="eval-transform", normalize="none", select_on="val", heldout_fraction=0.1,
                      **_DINOV3_PROBE),
        unknown=(
            "features: the paper does not say; SVG has no CLS token -- average-pooled 392-d latent assumed "
            "(could be 384-d DINO patches or a DINO CLS token)",
            "input resolution: 224 (DINOv3 codebase) assumed; SVG's encoder runs at 256 and its DINOv3 "
            "baselines differ from the official ones, so 256 is possible",
            "head, grid, schedule, augmentation and selection: assumed DINOv3's linear.py defaults",
            "kNN: the paper reports no kNN; the kNN numbers here are ours (pooled latent), not comparable",
        ),
        inherent=("train views are K crops cached once per image (DINOv3 draws a fresh random-resized crop "
                  "at every step); each epoch uses one of the K views per image, drawn at random",),
        reference_numbers={"SVG top-1/top-5": [81.80, 95.87], "DINOv3 ViT-S+ (SVG's run) top-1/top-5": [81.71, 95.79]},
    ),
    "svgfeat": Protocol(
        name="svgfeat",
        summary="svgfeat: ADM centre crop 256 (the SVG encoder's input), 1 view, [CLS, mean patch] + pooled "
                "latent, z-scored features, head selected on a held-out 10% of train (val never used), "
                "kNN on CLS",
        source="svgfeat (this package); grid and schedule from DINOv3",
        settings=dict(train_preset="svg", train_size=256, train_views=1, val_preset="svg", val_size=256,
                      features=("cls+pooled", "latent"), knn_features="cls", knn_k=DINOV3_KS, temperature=0.07,
                      knn_train="eval-transform", normalize="zscore", select_on="heldout", heldout_fraction=0.1,
                      lrs=DINOV3_LRS, weight_decays=(0.0,), optimizer="sgd", probe_batch_size=1024,
                      iterations=None, epochs=10, min_iterations=1000, schedule="cosine"),
    ),
}
DEFAULT_PROTOCOL = "svgfeat"

# ---------------------------------------------------------------------------------------------- dense protocols
# settings are head parameters (LinearSegHead / LinearDepthHead) plus ``cache_size`` (the side --cached resizes
# images to, depth only); the embedded samples have shrunken presets of their own (64 / 96 px images).
_ADE20K = dict(crop_size=512, max_iters=40000, warmup_iters=1500, batch_size=16, lr=1e-3, weight_decay=1e-3,
               schedule="cosine", slide_crop=512, slide_stride=341, inference="slide", mask_stride=4)
_NYUV2 = dict(crop_size=(416, 544), max_iters=38400, warmup_iters=12800, batch_size=16, lr=3e-4, weight_decay=1e-4,
              grad_clip=35.0, schedule="cosine", n_bins=256, min_depth=1e-3, max_depth=10.0, inference="whole",
              slide_crop=(416, 544), slide_stride=(208, 272), tta=True, cache_size=480)
DENSE_PROTOCOLS = {
    "ade20k-linear": Protocol(
        name="ade20k-linear", summary="DINOv3 ADE20K linear: BN + 1x1 conv on last-layer patches, 512 crops, "
        "40k AdamW iterations at batch 16, 1500 warm-up, sliding window 512 / 341",
        source="facebookresearch/dinov3 eval/segmentation (linear head, mmseg ADE20K pipeline)",
        settings=dict(task="seg", **_ADE20K)),
    "nyuv2-linear": Protocol(
        name="nyuv2-linear", summary="DINOv3 NYUv2 linear depth: BN + 1x1 conv, 256 linear bins 0.001-10 m, "
        "416 x 544 crops, 38.4k AdamW iterations at batch 16, 12.8k warm-up, flip TTA, Eigen crop",
        source="facebookresearch/dinov3 eval/depth (FeaturesToDepth, SigLoss)",
        settings=dict(task="depth", **_NYUV2)),
    "digitseg-sample": Protocol(
        name="digitseg-sample", summary="ade20k-linear shrunk to the 64-px sample:digitseg images",
        source="svgfeat", settings=dict(task="seg", **dict(_ADE20K, crop_size=64, max_iters=300, warmup_iters=30,
                                                            slide_crop=64, slide_stride=48))),
    "depth-sample": Protocol(
        name="depth-sample", summary="nyuv2-linear shrunk to the 96-px sample:depth images",
        source="svgfeat", settings=dict(task="depth", **dict(_NYUV2, crop_size=(96, 96), max_iters=150,
                                                              warmup_iters=15, lr=1e-2, batch_size=8,
                                                              slide_crop=(96, 96), slide_stride=(48, 48),
                                                              cache_size=96))),
}
_DENSE_DEFAULT = {"seg": ("ade20k-linear", "digitseg-sample"), "depth": ("nyuv2-linear", "depth-sample")}


def dense_protocol(task: str, data=None) -> Protocol:
    """The dense protocol of ``task`` ("seg" | "depth"): the sample's preset for ``sample:`` data."""
    if task not in _DENSE_DEFAULT:
        raise ConfigError(f"unknown dense task {task!r}; expected one of {sorted(_DENSE_DEFAULT)}")
    full, sample = _DENSE_DEFAULT[task]
    return DENSE_PROTOCOLS[sample if str(data).startswith("sample:") else full]


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def _norm(v):
    """Lists and tuples compare equal (CLI values arrive as lists)."""
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def resolve(name: str, **overrides) -> tuple[Protocol, dict, list[dict]]:
    """(protocol, settings used, deviations). ``overrides``: setting -> value, None = the protocol's.

    A deviation is {"setting", "protocol", "used"} for every override that differs from the protocol.
    """
    p = get_protocol(name)
    unknown_keys = set(overrides) - set(p.settings)
    if unknown_keys:
        raise ConfigError(f"unknown protocol setting(s) {sorted(unknown_keys)}; known: {sorted(p.settings)}")
    used = dict(p.settings)
    deviations = []
    for k, v in overrides.items():
        if v is None:
            continue
        if _norm(v) != _norm(p.settings[k]):
            deviations.append({"setting": k, "protocol": p.settings[k], "used": v})
        used[k] = v
    return p, used, deviations


REFERENCE_TRAIN_IMAGES = 1_281_167  # ImageNet-1K train: the data the protocols' step counts are written for
TINY_TRAIN_IMAGES = 20_000  # below this the data is "tiny": step counts scale with it
MIN_TINY_STEPS = 100


def scale_steps_to_data(st: dict, images: int, given=()) -> list[dict]:
    """On tiny data (fewer than 20,000 train images) the protocol's step counts (``iterations``,
    ``min_iterations``) scale with the data: ``steps x images / 1,281,167``, at least 100 -- DINOv3's 12,500 steps
    are 10 epochs of ImageNet, not 12,500 passes over 1,438 digits. ``st`` is updated in place; returns one
    deviation per scaled setting. Settings in ``given`` (set by the user) are left alone."""
    if images >= TINY_TRAIN_IMAGES:
        return []
    out = []
    for key in ("iterations", "min_iterations"):
        v = st.get(key)
        if key in given or not v or v <= MIN_TINY_STEPS:
            continue
        used = max(MIN_TINY_STEPS, -(-int(v) * images // REFERENCE_TRAIN_IMAGES))
        st[key] = used
        out.append(deviation(key, int(v), used, f"scaled to the data: {images:,} train images < {TINY_TRAIN_IMAGES:,} "
                                                f"(tiny): {v:,} x {images:,} / {REFERENCE_TRAIN_IMAGES:,}, at least "
                                                f"{MIN_TINY_STEPS}"))
    return out


TINY_TRAIN_VIEWS = 2


def scale_views_to_data(st: dict, images: int, given=()) -> list[dict]:
    """On tiny data the protocol's cached train views (DINOv3: 10, one per ImageNet epoch) are capped at 2: with
    the step counts scaled (:func:`scale_steps_to_data`) every view is revisited many times anyway, and 10 views of
    every image would make the extraction most of the run. Unless the user set ``train_views``."""
    v = st.get("train_views")
    if images >= TINY_TRAIN_IMAGES or "train_views" in given or not v or v <= TINY_TRAIN_VIEWS:
        return []
    st["train_views"] = TINY_TRAIN_VIEWS
    return [deviation("train_views", int(v), TINY_TRAIN_VIEWS,
                      f"scaled to the data: {images:,} train images < {TINY_TRAIN_IMAGES:,} (tiny): each view is "
                      "revisited many times with the scaled step count")]


def deviation(setting: str, protocol, used, note: str | None = None) -> dict:
    """A deviation record that is not a plain setting override (data, weights, clamped sizes)."""
    d = {"setting": setting, "protocol": protocol, "used": used}
    if note:
        d["note"] = note
    return d


__all__ = ["DEFAULT_PROTOCOL", "DENSE_PROTOCOLS", "PROTOCOLS", "Protocol", "dense_protocol", "deviation", "get_protocol",
           "resolve", "scale_steps_to_data", "scale_views_to_data"]
