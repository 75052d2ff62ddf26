"""Segmentation datasets: ADE20K, generic image/mask folder pairs and the embedded ``sample:digitseg`` set.

Every dataset is a :class:`SegDataset`: ``len()``, ``.root``, ``.paths`` (image paths relative to root, or
sample ids), ``.classes``, ``.num_classes``, ``.ignore_index`` (255), ``.palette`` (uint8 [K, 3]),
``.load(i)`` -> PIL RGB image, ``.load_mask(i)`` -> int64 [H, W] *training labels* (0..K-1 or 255; for
ADE20K the zero-label reduction is already applied) and ``.labels`` (int64 [n] of -1, so the dataset can be
handed to :func:`svgfeat.extract` like a classification dataset).

Layouts (``open_seg_dataset(spec, split)``):
- ADE20K: ``ROOT/images/{training,validation}/*.jpg`` + ``ROOT/annotations/{training,validation}/*.png``
  (raw labels 0..150, 0 = "other" -> ignored; 150 classes).
- Generic: ``ROOT/images/*`` + ``ROOT/masks/*.png`` with matching stems (or ``ROOT/images/<split>`` +
  ``ROOT/masks/<split>``); mask values are class indices, 255 ignored. Class names come from
  ``ROOT/classes.txt`` (one per line) when present, else ``num_classes`` or a scan of the masks.
- ``sample:digitseg/train`` | ``sample:digitseg/val``: scikit-learn's real handwritten 8x8 digits, each
  upsampled to a random size and pasted at a random place on a crop of a real scikit-image photo; mask =
  digit + 1 on the (thresholded) strokes, 0 = background (11 classes). A fixed seeded split, built in memory
  in about a second; no download.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..regular_files import read_text
from .datasets import ImageDataset
from .decode import load_image
from .transforms import normalize

IGNORE_INDEX = 255
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
DIGITSEG_CLASSES = ("background",) + tuple(f"digit {d}" for d in range(10))
_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def color_palette(num_classes: int) -> np.ndarray:
    """PASCAL-VOC style palette: uint8 [num_classes, 3] (class 0 black, distinct bright colours after)."""
    pal = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


class SegDataset(ImageDataset):
    """Image + label-map pairs (see the module docstring for the attributes).

    A :class:`~svgfeat.data.datasets.ImageDataset` (unlabelled at image level), so it can be passed to
    :func:`svgfeat.extract` to build a dense-feature cache.
    """

    kind = "segmentation"
    ignore_index = IGNORE_INDEX

    def __init__(self, root, images, masks, classes, reduce_zero_label=False, name="folder"):
        if len(images) != len(masks):
            raise DataError(f"{len(images)} images but {len(masks)} masks")
        super().__init__(root, images, None, classes, spec=name)
        if str(root).startswith("sample:"):
            self.root = "sample:"
        self.name = name
        self.mask_paths = list(masks)
        self.reduce_zero_label = bool(reduce_zero_label)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"SegDataset({self.name}, n={len(self)}, classes={self.num_classes}, root={self.root!r})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> np.ndarray:
        return color_palette(max(self.num_classes, 1))

    def load(self, i: int) -> Image.Image:
        """Image i as an RGB PIL image (raises DecodeError)."""
        return load_image(self.abspath(i))

    def load_mask(self, i: int) -> np.ndarray:
        """Label map i: int64 [H, W] with values 0..K-1 or 255 (ignored)."""
        p = Path(self.root) / self.mask_paths[i]
        raw = read_mask(p)
        if self.reduce_zero_label:
            out = raw - 1
            out[raw == 0] = IGNORE_INDEX
            out[raw == IGNORE_INDEX] = IGNORE_INDEX
            raw = out
        return check_labels(raw, self.num_classes, p)

    def load_pair(self, i: int) -> tuple[Image.Image, np.ndarray]:
        img, mask = self.load(i), self.load_mask(i)
        if img.size != (mask.shape[1], mask.shape[0]):
            raise DataError(f"{self.paths[i]}: image is {img.size[0]}x{img.size[1]} but its mask is "
                            f"{mask.shape[1]}x{mask.shape[0]} (W x H)")
        return img, mask

    def subset(self, indices) -> "SegDataset":
        """A dataset view with the given rows (same classes)."""
        idx = [int(i) for i in indices]
        out = SegDataset(self.root, [self.paths[i] for i in idx], [self.mask_paths[i] for i in idx],
                         self.classes, self.reduce_zero_label, self.name)
        return out


class DigitSegDataset(SegDataset):
    """The embedded ``sample:digitseg`` split (images and masks generated in memory, deterministic)."""

    def __init__(self, split: str = "train", size: int = 64):
        images, masks = _digitseg(split, int(size))
        self._images, self._masks = images, masks
        ids = [f"digitseg/{split}/{i:05d}" for i in range(len(images))]
        super().__init__("sample:", ids, ids, DIGITSEG_CLASSES, False, f"sample:digitseg/{split}")
        self._rows = np.arange(len(images))

    def abspath(self, i: int) -> str:
        return f"sample:{self.paths[i]}"

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[self._rows[i]])

    def load_mask(self, i: int) -> np.ndarray:
        return self._masks[self._rows[i]].astype(np.int64)

    def subset(self, indices) -> "DigitSegDataset":
        out = object.__new__(DigitSegDataset)
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        SegDataset.__init__(out, self.root, [self.paths[i] for i in idx], [self.mask_paths[i] for i in idx],
                            self.classes, False, self.name)
        out._images, out._masks, out._rows = self._images, self._masks, self._rows[idx]
        return out

    def describe(self) -> dict:
        return {**super().describe(), "size": int(self._images.shape[1])}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images uint8 [n, S, S, 3] and masks uint8 [n, S, S] of this split."""
        return self._images[self._rows], self._masks[self._rows]


# ----------------------------------------------------------------------------- digitseg generation
DIGITSEG_SEED = 0
DIGITSEG_NTRAIN = 1400  # of sklearn's 1797 digits; the remaining 397 are the val split
_BACKGROUNDS = ("coffee", "chelsea", "astronaut", "rocket", "brick", "grass", "gravel", "immunohistochemistry")


@functools.lru_cache(maxsize=1)
def _backgrounds() -> tuple:
    import skimage.data

    out = []
    for name in _BACKGROUNDS:
        a = np.asarray(getattr(skimage.data, name)())
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(a[..., :3].astype(np.uint8)))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _digitseg(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Build one split: (images uint8 [n, S, S, 3], masks uint8 [n, S, S]); deterministic."""
    if split not in ("train", "val"):
        raise DataError(f"sample:digitseg split {split!r}: expected 'train' or 'val'")
    if size < 32:
        raise DataError(f"digitseg size must be >= 32, got {size}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DIGITSEG_SEED).permutation(len(digits.target))
    rows = order[:DIGITSEG_NTRAIN] if split == "train" else order[DIGITSEG_NTRAIN:]
    rng = np.random.default_rng(DIGITSEG_SEED + (1 if split == "train" else 2))
    bgs = _backgrounds()
    images = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(rows), size, size), dtype=np.uint8)
    for k, r in enumerate(rows):
        images[k], masks[k] = _render(digits.images[r] / 16.0, int(digits.target[r]), bgs, rng, size)
    return images, masks


def _render(digit: np.ndarray, label: int, bgs, rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample: a real photo crop with an upsampled 8x8 digit pasted on it, and its label map.

    Each digit class is inked in its own hue (class d -> hue 36 d degrees, jittered), so the task is
    learnable from local colour even by the random tiny test encoders; shape cues come on top for real ones.
    """
    import colorsys

    bg = bgs[rng.integers(len(bgs))]
    c = int(rng.integers(size, max(size + 1, min(bg.shape[:2]) // 2)))
    y, x = rng.integers(0, bg.shape[0] - c + 1), rng.integers(0, bg.shape[1] - c + 1)
    canvas = np.asarray(Image.fromarray(bg[y:y + c, x:x + c]).resize((size, size), Image.BILINEAR),
                        dtype=np.float32) / 255.0
    s = int(rng.integers(int(0.6 * size), int(0.95 * size) + 1))
    ink = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                     dtype=np.float32) / 255.0
    oy, ox = rng.integers(0, size - s + 1, size=2)
    hue = (label / 10.0 + rng.uniform(-0.02, 0.02)) % 1.0
    colour = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0)), np.float32)
    alpha = np.clip((ink - 0.1) / 0.3, 0.0, 1.0)[..., None]
    region = canvas[oy:oy + s, ox:ox + s]
    canvas[oy:oy + s, ox:ox + s] = region * (1 - alpha) + colour * alpha
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[oy:oy + s, ox:ox + s][ink > 0.3] = label + 1
    return (canvas * 255 + 0.5).clip(0, 255).astype(np.uint8), mask


# ----------------------------------------------------------------------------- folder layouts
def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _pair(root: Path, img_dir: Path, mask_dir: Path) -> tuple[list[str], list[str]]:
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(f"expected image folder {img_dir} and mask folder {mask_dir}")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS}
    images, pairs = _list_images(img_dir), []
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{len(missing)} image(s) in {img_dir} have no mask with the same stem in {mask_dir}, "
                        f"e.g. {missing[:3]}")
    for p in images:
        pairs.append((str(p.relative_to(root)), str(masks[p.stem].relative_to(root))))
    if not pairs:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    return [a for a, _ in pairs], [b for _, b in pairs]


MASK_MODES = ("L", "P", "I", "I;16", "1")  # single-channel class indices (PNG palette images included)


def read_mask(path) -> np.ndarray:
    """A label-map file -> int64 [H, W] class indices. Colour masks (RGB, RGBA, LA, ...) are refused: their
    colours are not class indices, and a grey conversion would invent labels."""
    p = Path(path)
    try:
        with Image.open(p) as m:
            if m.mode not in MASK_MODES:
                raise DataError(f"mask {p} is a {m.mode} image; expected single-channel class indices (PNG mode "
                                "L, P or I), e.g. ADE20K's annotations -- convert colour masks to indices first")
            return np.asarray(m).astype(np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read mask {p}: {e}") from None


def check_labels(mask: np.ndarray, num_classes: int, where) -> np.ndarray:
    """``mask`` unchanged when every value is a class index 0..num_classes-1 or IGNORE_INDEX; else DataError."""
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        vals = sorted(int(v) for v in np.unique(mask[bad])[:5])
        raise DataError(f"mask {where} has labels {vals} outside 0..{num_classes - 1} (and not {IGNORE_INDEX} = "
                        "ignored): a wrong classes.txt / num_classes, or ADE20K-style labels without "
                        "reduce_zero_label?")
    return mask


def _scan_num_classes(root: Path, masks: list[str], limit: int = 2000) -> int:
    top = -1
    for m in masks[:limit]:
        a = read_mask(root / m)
        a = a[a != IGNORE_INDEX]
        if a.size:
            top = max(top, int(a.max()))
    if top < 0:
        raise DataError(f"all scanned masks under {root} are empty or fully ignored; pass num_classes")
    return top + 1


def is_ade20k(root) -> bool:
    """True for a folder with ADE20K's images/<split> + annotations/<split> (training and/or validation)."""
    r = Path(root)
    return any((r / "images" / s).is_dir() and (r / "annotations" / s).is_dir() for s in ("training", "validation"))


def open_seg_dataset(spec, split: str | None = None, num_classes: int | None = None,
                     sample_size: int = 64) -> SegDataset:
    """Open a segmentation dataset.

    ``spec``: ``"sample:digitseg/train"`` | ``"sample:digitseg/val"`` | ``"sample:digitseg"`` (+ ``split``)
    | an ADE20K root | a generic folder with ``images/`` and ``masks/``. ``split``: "train" / "val" (default
    "train"; for ADE20K it picks ``training`` / ``validation``). ``num_classes`` overrides the class count
    of a generic folder without ``classes.txt``.
    """
    if isinstance(spec, SegDataset):
        return spec
    s = str(spec)
    if s.startswith("sample:"):
        name, _, sp = s[len("sample:"):].partition("/")
        if name != "digitseg":
            raise DataError(f"unknown segmentation sample {s!r}; expected 'sample:digitseg/train' or "
                            "'sample:digitseg/val'")
        sp = sp or split or "train"
        return DigitSegDataset(sp, sample_size)
    from .detect import refuse_image_only_source

    refuse_image_only_source(s, "segmentation")
    root = Path(s)
    if not root.is_dir():
        raise DataError(f"segmentation dataset not found: {root} (expected a folder or 'sample:digitseg/...')")
    split = split or "train"
    if split not in _SPLITS:
        raise DataError(f"split {split!r}: expected one of {sorted(_SPLITS)}")
    if is_ade20k(root):
        sub = _SPLITS[split]
        images, masks = _pair(root, root / "images" / sub, root / "annotations" / sub)
        return SegDataset(root, images, masks, ADE20K_CLASSES, reduce_zero_label=True, name=f"ade20k/{sub}")
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DataError(f"{root} is neither an ADE20K root (images/training + annotations/training) nor a "
                        "folder with images/ and masks/ subfolders")
    for cand in (split, _SPLITS[split]):
        if (img_dir / cand).is_dir():
            img_dir, mask_dir = img_dir / cand, mask_dir / cand
            break
    images, masks = _pair(root, img_dir, mask_dir)
    cls_file = root / "classes.txt"
    if cls_file.exists() or cls_file.is_symlink():  # a FIFO or folder named classes.txt is refused, not skipped
        classes = [ln.strip() for ln in read_text(cls_file, "class list", error=DataError).splitlines() if ln.strip()]
    else:
        k = int(num_classes) if num_classes else _scan_num_classes(root, masks)
        classes = [f"class {i}" for i in range(k)]
    return SegDataset(root, images, masks, classes, reduce_zero_label=False, name=f"folder/{img_dir.name}")


def write_folder_dataset(ds: SegDataset, out, layout: str = "folder", split: str = "train",
                         image_ext: str = ".png", overwrite: bool = False) -> Path:
    """Write ``ds`` to disk as image/mask pairs: ``layout='folder'`` (images/, masks/, classes.txt) or
    ``'ade20k'`` (images/<training|validation>/, annotations/... with raw labels + 1). Images are lossless
    ``*.png`` unless ``image_ext=".jpg"`` (what mmseg's ADE20KDataset reads); masks are always PNG.

    Useful to feed the embedded sample to mmseg's file-based pipelines. Every file is checked before any is
    written: one svgfeat did not write is refused unless ``overwrite``; each is written whole or not at all.
    """
    from ..atomic import write_bytes_atomic
    from ..outputs import check_outputs
    from ..picture_files import encode_image

    out = Path(out)
    sub = _SPLITS.get(split, split)
    if layout == "ade20k":
        img_dir, mask_dir = out / "images" / sub, out / "annotations" / sub
    elif layout == "folder":
        img_dir, mask_dir = out / "images", out / "masks"
    else:
        raise DataError(f"layout {layout!r}: expected 'folder' or 'ade20k'")
    stems = [Path(p).stem for p in ds.paths]
    files = [d / f"{s}{x}" for s in stems for d, x in ((img_dir, image_ext), (mask_dir, ".png"))]
    check_outputs(files + ([out / "classes.txt"] if layout == "folder" else []), overwrite)
    for i, stem in enumerate(stems):
        img, mask = ds.load_pair(i)
        write_bytes_atomic(img_dir / f"{stem}{image_ext}", encode_image(img, image_ext), durable=False)
        m = mask.copy()
        if layout == "ade20k":  # raw ADE convention: 0 = ignored "other", class k stored as k + 1
            m = np.where(mask == IGNORE_INDEX, 0, mask + 1)
        write_bytes_atomic(mask_dir / f"{stem}.png", encode_image(Image.fromarray(m.astype(np.uint8), "L"), ".png"),
                           durable=False)
    if layout == "folder":
        write_bytes_atomic(out / "classes.txt", ("\n".join(ds.classes) + "\n").encode(), durable=False)
    return out


class ArraySegDataset(SegDataset):
    """In-memory pairs: ``images`` (PIL images, paths or uint8 [H, W, 3] arrays) and ``masks`` (int [H, W])."""

    kind = "segmentation-arrays"

    def __init__(self, images, masks, classes=None, num_classes=None):
        images, masks = list(images), [np.asarray(m) for m in masks]
        if len(images) != len(masks):
            raise DataError(f"{len(images)} images but {len(masks)} masks")
        if classes is None:
            if num_classes is None:
                tops = [int(m[m != IGNORE_INDEX].max()) for m in masks if (m != IGNORE_INDEX).any()]
                if not tops:
                    raise DataError("every mask is fully ignored; pass num_classes")
                num_classes = max(tops) + 1
            classes = [f"class {i}" for i in range(int(num_classes))]
        ids = [f"arrays/{i:06d}" for i in range(len(images))]
        super().__init__("sample:", ids, ids, classes, False, "arrays")
        self._images, self._masks = images, masks

    def load(self, i: int) -> Image.Image:
        return to_pil(self._images[i])

    def load_mask(self, i: int) -> np.ndarray:
        m = self._masks[i]
        if m.dtype.kind not in "iub":
            raise DataError(f"mask {i} must hold integer labels, got dtype {m.dtype}")
        return check_labels(m.astype(np.int64), self.num_classes, i)

    def subset(self, indices) -> "ArraySegDataset":
        idx = [int(i) for i in indices]
        return ArraySegDataset([self._images[i] for i in idx], [self._masks[i] for i in idx], self.classes)


# ----------------------------------------------------------------------------- pair transforms
def to_pil(x) -> Image.Image:
    """A path, PIL image, uint8 array [H, W, 3] / [H, W] or uint8 tensor -> RGB PIL image."""
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, (str, Path)):
        return load_image(x)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise DataError(f"expected a uint8 image [H, W, 3] or [H, W], got dtype {a.dtype} shape {a.shape}")
    return Image.fromarray(a).convert("RGB")


def rescale_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale`` with keep_ratio: factor min(long_max / long, short_max / short); returns (w, h)."""
    long_max, short_max = max(scale), min(scale)
    f = min(long_max / max(w, h), short_max / min(w, h))
    return max(1, int(w * f + 0.5)), max(1, int(h * f + 0.5))


def resize_pair(img: Image.Image, mask: np.ndarray | None, size: tuple[int, int]):
    """Resize image (bilinear) and mask (nearest) to ``size`` = (w, h)."""
    img = img.resize(size, Image.BILINEAR) if img.size != size else img
    if mask is not None and (mask.shape[1], mask.shape[0]) != size:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8), "L").resize(size, Image.NEAREST)).astype(np.int64)
    return img, mask


class SegTrainAugment:
    """mmseg's ADE20K training pipeline on one (image, mask) pair; picklable (DataLoader workers).

    RandomResize(scale=(4 * base, base) * r, keep_ratio) with r ~ U(scale_range), RandomCrop(crop,
    cat_max_ratio) (up to 10 tries so that no class covers more than ``cat_max_ratio`` of the crop),
    RandomFlip(0.5), pad to crop x crop (image 0 after normalisation, mask 255). Returns (float32 [3, c, c]
    ImageNet-normalised, int64 [c, c]).
    """

    def __init__(self, crop: int = 512, base: int = 512, scale_range=(0.5, 2.0), flip: bool = True,
                 cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
        self.crop, self.base, self.scale_range = int(crop), int(base), tuple(scale_range)
        self.flip, self.cat_max_ratio, self.ignore_index = bool(flip), float(cat_max_ratio), int(ignore_index)

    def _crop_box(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        h, w = mask.shape
        ch, cw = min(self.crop, h), min(self.crop, w)
        box = (0, 0, ch, cw)
        for _ in range(10):
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            box = (y, x, ch, cw)
            if self.cat_max_ratio >= 1:
                break
            m = mask[y:y + ch, x:x + cw]
            _, cnt = np.unique(m[m != self.ignore_index], return_counts=True)
            if len(cnt) > 1 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                break
        return box

    def __call__(self, img: Image.Image, mask: np.ndarray, rng: np.random.Generator):
        r = float(rng.uniform(*self.scale_range))
        size = rescale_size(*img.size, (int(4 * self.base * r), int(self.base * r)))
        img, mask = resize_pair(img, mask, size)
        y, x, ch, cw = self._crop_box(mask, rng)
        x_img = normalize(np.asarray(img)[y:y + ch, x:x + cw])
        m = mask[y:y + ch, x:x + cw]
        if self.flip and rng.random() < 0.5:
            x_img, m = x_img.flip(-1), m[:, ::-1]
        out = np.full((self.crop, self.crop), self.ignore_index, dtype=np.int64)
        out[:ch, :cw] = m
        if (ch, cw) != (self.crop, self.crop):
            import torch

            pad = torch.zeros(3, self.crop, self.crop)
            pad[:, :ch, :cw] = x_img
            x_img = pad
        return x_img.contiguous(), out


def transform_mask(mask: np.ndarray, spec: dict) -> np.ndarray:
    """Apply the *geometry* of an image transform (``Transform.spec()`` dict, as a cache records it) to a
    label map with nearest-neighbour resampling, so masks line up with cached features."""
    preset, size = spec.get("preset", "none"), int(spec.get("size", 0) or 0)
    im = Image.fromarray(np.asarray(mask).astype(np.uint8), "L")
    if preset == "resize":
        im = im.resize((size, size), Image.NEAREST)
    elif preset == "svg":
        while min(im.size) >= 2 * size:
            im = im.resize(tuple(x // 2 for x in im.size), Image.NEAREST)
        f = size / min(im.size)
        im = im.resize(tuple(round(x * f) for x in im.size), Image.NEAREST)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    elif preset == "center-crop":
        import math

        short = int(math.floor(size / float(spec.get("crop_pct", 0.875))))
        w, h = im.size
        f = short / min(w, h)
        im = im.resize((max(size, round(w * f)), max(size, round(h * f))), Image.NEAREST)
        w, h = im.size
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    elif preset != "none":
        raise DataError(f"unknown transform preset {preset!r} in the cache manifest")
    if spec.get("hflip"):
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(im).astype(np.int64)
