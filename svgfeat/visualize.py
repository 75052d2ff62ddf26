"""Picture helpers, in one place: patch-feature PCA as RGB, side-by-side panels, depth colour maps and
segmentation overlays. Pure numpy / PIL (sklearn for the PCA); every function returns uint8 arrays."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=0, keepdims=True), a.max(axis=0, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def patch_pca_rgb(features, fg_threshold: float | None = None, invert: bool = False):
    """Patch feature maps -> RGB pictures of their first 3 principal components.

    PCA is fitted over the patch tokens of all maps together, so colours are comparable across images. With
    ``fg_threshold`` the first component (min-max scaled to [0, 1] over all tokens) separates foreground
    (> threshold, or < with ``invert``) from background; PCA is then refitted on the foreground tokens only
    and the background is black (DINOv2's visualisation).

    ``features``: list of float arrays [C, h, w] (one per image; sizes may differ). Returns (list of uint8
    [h, w, 3], explained variance ratios of the 3 components, list of bool foreground masks [h, w]).
    """
    from sklearn.decomposition import PCA

    if not features:
        raise ConfigError("no feature maps given")
    shapes = [f.shape[1:] for f in features]
    tokens = np.concatenate([np.asarray(f, dtype=np.float32).reshape(f.shape[0], -1).T for f in features])
    if len(tokens) < 3:
        raise ConfigError(f"PCA needs at least 3 patch tokens, got {len(tokens)}")
    fg = np.ones(len(tokens), dtype=bool)
    if fg_threshold is not None:
        first = _minmax(PCA(n_components=1, random_state=0).fit_transform(tokens))[:, 0]
        fg = first < fg_threshold if invert else first > fg_threshold
        if fg.sum() < 3:
            raise ConfigError(f"--fg-threshold {fg_threshold} keeps {int(fg.sum())} token(s); lower it or use "
                              "--fg-invert")
    pca = PCA(n_components=3, random_state=0).fit(tokens[fg])
    rgb = np.zeros((len(tokens), 3), dtype=np.float32)
    rgb[fg] = _minmax(pca.transform(tokens[fg]))
    out, masks, start = [], [], 0
    for h, w in shapes:
        n = h * w
        out.append((rgb[start:start + n].reshape(h, w, 3) * 255 + 0.5).astype(np.uint8))
        masks.append(fg[start:start + n].reshape(h, w))
        start += n
    return out, [float(v) for v in pca.explained_variance_ratio_], masks


def upscale(picture: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of a uint8 [h, w, 3] picture by an integer factor (one patch -> a block)."""
    return np.repeat(np.repeat(np.asarray(picture), int(factor), axis=0), int(factor), axis=1)


def side_by_side(*panels) -> np.ndarray:
    """uint8 pictures [H, W_i, 3] (or [H, W_i]) of one height -> one picture [H, sum W_i, 3], left to right."""
    arrs = [np.asarray(p) for p in panels]
    arrs = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrs]
    heights = {a.shape[0] for a in arrs}
    if len(heights) != 1:
        raise ConfigError(f"side-by-side panels must share a height, got {sorted(heights)}")
    return np.concatenate([a.astype(np.uint8) for a in arrs], axis=1)


# inferno-like anchors (dark far, bright near), linearly interpolated
_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colorize_depth(depth: np.ndarray, vmin: float = 0.0, vmax: float = 10.0) -> np.ndarray:
    """Depth [H, W] (metres) -> uint8 [H, W, 3] colour image: near bright yellow, far dark purple."""
    if not vmax > vmin:
        raise ConfigError(f"colour range needs vmax > vmin, got {vmin}, {vmax}")
    t = 1.0 - np.clip((np.asarray(depth, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    pos = t * (len(_CMAP) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(_CMAP) - 2)
    frac = (pos - lo)[..., None]
    return np.round(_CMAP[lo] * (1 - frac) + _CMAP[lo + 1] * frac).astype(np.uint8)


def overlay(image, colour: np.ndarray, alpha: float) -> np.ndarray:
    """Blend a colour picture over an image: (1 - alpha) image + alpha colour, uint8."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    base = np.asarray(image, dtype=np.float32)
    return (base * (1 - alpha) + colour.astype(np.float32) * alpha).round().clip(0, 255).astype(np.uint8)


def pca_pictures(images, encoder, *, group: str = "dino", size: int = 448, preset: str = "resize", device="cpu",
                 fg_threshold: float | None = None, invert: bool = False, original: bool = True):
    """PIL images -> (uint8 pictures, explained variance ratios, patch token count): each picture is the image
    as the encoder saw it (``preset`` / ``size``) beside its patch-feature PCA map (one colour per patch), or
    the PCA map alone with ``original=False``. PCA is fitted over all images' tokens (see :func:`patch_pca_rgb`)."""
    import torch

    from .data.transforms import Transform, denormalize

    if fg_threshold is not None and not 0 <= fg_threshold <= 1:
        raise ConfigError(f"--fg-threshold must be in [0, 1], got {fg_threshold}")
    t = Transform(preset, size)
    inputs, feats = [], []
    with torch.no_grad():
        for im in images:  # one image at a time: features do not depend on batch-mates
            x = t(im)
            inputs.append((denormalize(x).clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
            feats.append(encoder.encode(x[None].to(device)).group(group)[0].float().cpu().numpy())
    maps, ratios, _ = patch_pca_rgb(feats, fg_threshold, invert)
    big = [upscale(m, encoder.patch_size) for m in maps]
    pics = [side_by_side(src, b) if original else b for src, b in zip(inputs, big)]
    return pics, ratios, sum(f.shape[1] * f.shape[2] for f in feats)

