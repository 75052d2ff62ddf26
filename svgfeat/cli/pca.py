"""`svgfeat pca IMAGES... -o DIR`: the first 3 PCA components of the patch features shown as RGB.

PCA is fitted over the patch tokens of all given images together, so colours are comparable across
images. With ``--fg-threshold`` the first component (min-max scaled to [0, 1] over all tokens) separates
foreground (> threshold, or < with ``--fg-invert``) from background; PCA is then refitted on the
foreground tokens only and the background is drawn black (DINOv2's visualisation).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from ..errors import ConfigError
from ._common import build_encoder, encoder_options, png_bytes, write_output
from ._types import SIZE, Real


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(axis=0, keepdims=True), a.max(axis=0, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def patch_pca_rgb(features, fg_threshold: float | None = None, invert: bool = False):
    """Patch feature maps -> RGB pictures of their first 3 principal components.

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


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@encoder_options
@click.option("--group", type=click.Choice(["dino", "latent"]), default="dino", show_default=True)
@click.option("--size", type=SIZE, default=448, show_default=True, help="Input size (multiple of 16).")
@click.option("--preset", type=click.Choice(["resize", "svg", "center-crop"]), default="resize", show_default=True)
@click.option("--fg-threshold", type=Real(0, 1, "a threshold"), default=None,
              help="Keep tokens whose first component (scaled to [0, 1]) exceeds this, e.g. 0.5.")
@click.option("--fg-invert", is_flag=True, help="Foreground is *below* the threshold (PCA sign is arbitrary).")
@click.option("--side-by-side", is_flag=True, help="Write the input next to the PCA picture.")
def pca(images, out, dinov3, svg, svg_config, model, alignment, device, group, size, preset, fg_threshold,
        fg_invert, side_by_side):
    """Write <stem>_pca.png for each of IMAGES (paths or sample:photos): patch-feature PCA as RGB."""
    from PIL import Image

    from ..data import open_dataset
    from ..data.transforms import Transform, denormalize

    if fg_threshold is not None and not 0 <= fg_threshold <= 1:
        raise ConfigError(f"--fg-threshold must be in [0, 1], got {fg_threshold}")
    enc = build_encoder(dinov3, svg, svg_config, model, alignment, device)
    if len(images) == 1 and images[0].startswith("sample:"):
        ds = open_dataset(images[0])
        pil, stems = [ds.load(i) for i in range(len(ds))], [Path(p).name for p in ds.paths]
    else:
        from ..data.decode import load_image

        pil, stems = [load_image(p) for p in images], [Path(p).stem for p in images]
    t = Transform(preset, size)
    feats = []
    for im in pil:  # one image at a time: features do not depend on batch-mates
        x = t(im)[None].to(device)
        feats.append(enc.encode(x).group(group)[0].float().cpu().numpy())
    pics, ratios, _ = patch_pca_rgb(feats, fg_threshold, fg_invert)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    for im, pic, stem in zip(pil, pics, stems):
        p = enc.patch_size
        big = Image.fromarray(pic).resize((pic.shape[1] * p, pic.shape[0] * p), Image.NEAREST)
        if side_by_side:
            src = (denormalize(t(im)).clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            canvas = Image.new("RGB", (big.width * 2, big.height))
            canvas.paste(Image.fromarray(src), (0, 0))
            canvas.paste(big, (big.width, 0))
            big = canvas
        write_output(outdir / f"{stem}_pca.png", png_bytes(big))
    click.echo(f"PCA over {sum(f.shape[1] * f.shape[2] for f in feats)} patch tokens of {len(feats)} image(s); "
               f"explained variance {', '.join(f'{r:.3f}' for r in ratios)}")
    click.echo(f"wrote {len(pics)} picture(s) to {outdir}")
