"""Depth datasets: NYUv2 (list files or mmseg layout), plain image/depth folders and the ``sample:depth`` set.

Every dataset is a :class:`DepthDataset`: ``len()``, ``.root``, ``.paths`` (image paths relative to root, or
sample ids), ``.depth_paths``, ``.load(i)`` -> PIL RGB image, ``.load_depth(i)`` -> float32 [H, W] depth in
metres (0 = no measurement), ``.load_pair(i)`` and ``.labels`` (int64 of -1, so the dataset can be handed to
:func:`svgfeat.extract` like a classification dataset to build a dense-feature cache).

Depth files: 16-bit PNG (raw value / ``depth_scale``; NYUv2 stores millimetres, so the default scale for
PNG is 1000) or ``.npy`` float arrays (metres unless ``depth_scale`` says otherwise; default scale 1); 0 = no
measurement. 8-bit PNGs (only with an explicit ``depth_scale``), NaN / inf values and maps without a positive
depth are refused with the file named.

Layouts (``open_depth_dataset(spec, split)``):
- NYUv2, BTS / AdaBins / DINOv2 list files: ``ROOT/nyudepthv2_{train,test}_files_with_gt.txt`` (or any list
  via ``split_file``), one ``rgb_path depth_path [focal]`` per line, paths relative to ROOT (a leading ``/`` is
  ignored; lines whose depth is ``None`` are skipped). The Eigen test split is the 654-line test list.
- NYUv2, mmseg layout: ``ROOT/images/{train,test}/*.jpg`` + ``ROOT/annotations/{train,test}/*.png`` (mm).
- Generic folder: ``ROOT/images/*`` + ``ROOT/depth/*.{png,npy}`` with matching stems (or per-split
  sub-folders ``images/<split>`` + ``depth/<split>``).
- ``sample:depth/train`` | ``sample:depth/val``: procedurally rendered rooms (floor, ceiling, side walls, back
  wall, boxes standing on the floor) with exact z-depth. Surfaces are textured in world coordinates (texture
  shrinks with distance) and seen through exponential fog (colour drifts to the fog colour with distance),
  so depth is learnable from local image content. 96 x 96 images, depths 0.5-9.5 m; deterministic from a
  seed, built in memory in about a second; no download.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..regular_files import LIST_BYTES, read_text
from .datasets import ImageDataset
from .decode import load_image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEPTH_EXTS = (".png", ".npy")
NYU_LISTS = {"train": "nyudepthv2_train_files_with_gt.txt", "test": "nyudepthv2_test_files_with_gt.txt"}
_NYU_SPLITS = {"train": "train", "val": "test", "test": "test"}
EIGEN_TEST_SIZE = 654


class DepthDataset(ImageDataset):
    """Image + metric depth pairs (see the module docstring). ``eval_crop``: "eigen" for NYUv2, else None."""

    kind = "depth"

    def __init__(self, root, images, depths, depth_scale=None, name="folder", eval_crop=None):
        if len(images) != len(depths):
            raise DataError(f"{len(images)} images but {len(depths)} depth maps")
        super().__init__(root, images, None, [], spec=name)
        if str(root).startswith("sample:"):
            self.root = "sample:"
        self.name = name
        self.depth_paths = list(depths)
        self.depth_scale = None if depth_scale is None else float(depth_scale)
        if self.depth_scale is not None and not self.depth_scale > 0:
            raise DataError(f"depth_scale must be > 0, got {depth_scale}")
        self.eval_crop = eval_crop

    def __repr__(self) -> str:
        return f"DepthDataset({self.name}, n={len(self)}, root={self.root!r})"

    def load(self, i: int, draft=None) -> Image.Image:
        return load_image(self.abspath(i))

    def load_depth(self, i: int) -> np.ndarray:
        """Depth map i in metres: float32 [H, W]; 0 = no measurement (see :func:`read_depth` for what is refused)."""
        return read_depth(Path(self.root) / self.depth_paths[i], self.depth_scale)

    def load_pair(self, i: int) -> tuple[Image.Image, np.ndarray]:
        img, depth = self.load(i), self.load_depth(i)
        if img.size != (depth.shape[1], depth.shape[0]):
            raise DataError(f"{self.paths[i]}: image is {img.size[0]}x{img.size[1]} but its depth map is "
                            f"{depth.shape[1]}x{depth.shape[0]} (W x H)")
        return img, depth

    def subset(self, indices) -> "DepthDataset":
        idx = [int(i) for i in indices]
        return DepthDataset(self.root, [self.paths[i] for i in idx], [self.depth_paths[i] for i in idx],
                            self.depth_scale, self.name, self.eval_crop)

    def describe(self) -> dict:
        return {**super().describe(), "depth_scale": self.depth_scale, "eval_crop": self.eval_crop}


def read_depth(path, depth_scale=None) -> np.ndarray:
    """A depth file -> float32 [H, W] metres. 16-bit PNG: raw / (depth_scale or 1000); .npy: raw / (depth_scale
    or 1). Refused with the file named (DataError): an 8-bit PNG without an explicit ``depth_scale`` (millimetres
    do not fit in 8 bits: 0-0.255 m would train silently), NaN / inf values (store missing depth as 0), and a
    map without any positive depth (all zero or negative)."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".npy":
            raw = np.load(p, allow_pickle=False)
            scale = 1.0 if depth_scale is None else float(depth_scale)
        else:
            with Image.open(p) as im:
                raw = np.asarray(im)
            scale = 1000.0 if depth_scale is None else float(depth_scale)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read depth map {p}: {e}") from None
    raw = np.squeeze(raw)
    if raw.ndim != 2 or raw.dtype.kind not in "uif":
        raise DataError(f"depth map {p} must be a single-channel numeric image, got dtype {raw.dtype} "
                        f"shape {raw.shape}")
    if raw.dtype == np.uint8 and depth_scale is None:
        raise DataError(f"depth map {p} is an 8-bit image: millimetres need 16 bits (NYUv2 stores uint16); pass "
                        "--depth-scale (raw units per metre) if its values really are depth")
    bad = int((~np.isfinite(raw)).sum()) if raw.dtype.kind == "f" else 0
    if bad:
        raise DataError(f"depth map {p} has {bad} NaN/inf value(s); store missing depth as 0")
    d = raw.astype(np.float32) / np.float32(scale)
    if not (d > 0).any():
        raise DataError(f"depth map {p} has no valid depth (every value is 0 or negative)")
    return d


# ----------------------------------------------------------------------------- sample:depth
SAMPLE_SEED = 0
SAMPLE_SIZES = {"train": 480, "val": 120}
SAMPLE_HW = (96, 96)
FOG = np.array([0.78, 0.82, 0.88], np.float32)


class SampleDepthDataset(DepthDataset):
    """The embedded ``sample:depth`` split (rendered in memory, deterministic)."""

    kind = "depth-sample"

    def __init__(self, split: str = "train"):
        images, depths = _sample_depth(split)
        self._images, self._depths = images, depths
        ids = [f"depth/{split}/{i:05d}" for i in range(len(images))]
        super().__init__("sample:", ids, ids, None, f"sample:depth/{split}")
        self._rows = np.arange(len(images))

    def abspath(self, i: int) -> str:
        return f"sample:{self.paths[i]}"

    def load(self, i: int, draft=None) -> Image.Image:
        return Image.fromarray(self._images[self._rows[i]])

    def load_depth(self, i: int) -> np.ndarray:
        return self._depths[self._rows[i]].copy()

    def subset(self, indices) -> "SampleDepthDataset":
        out = object.__new__(SampleDepthDataset)
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        DepthDataset.__init__(out, "sample:", [self.paths[i] for i in idx], [self.depth_paths[i] for i in idx],
                              None, self.name)
        out._images, out._depths, out._rows = self._images, self._depths, self._rows[idx]
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images uint8 [n, H, W, 3] and depths float32 [n, H, W] of this split."""
        return self._images[self._rows], self._depths[self._rows]


@functools.lru_cache(maxsize=2)
def _sample_depth(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SAMPLE_SIZES:
        raise DataError(f"sample:depth split {split!r}: expected 'train' or 'val'")
    rng = np.random.default_rng((SAMPLE_SEED, 0 if split == "train" else 1))
    n, (H, W) = SAMPLE_SIZES[split], SAMPLE_HW
    images = np.empty((n, H, W, 3), np.uint8)
    depths = np.empty((n, H, W), np.float32)
    for k in range(n):
        images[k], depths[k] = render_room(rng, H, W)
    return images, depths


def render_room(rng: np.random.Generator, H: int = 96, W: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One rendered room: (uint8 [H, W, 3] image, float32 [H, W] z-depth in metres).

    Pinhole camera (focal ~W) at height ``cam`` looking down the room's axis; floor, ceiling, two side walls,
    a back wall at 6-9.5 m and 0-3 boxes on the floor. Each surface: a random albedo times a world-space
    checker / stripe texture and Lambert-like shading; then fog ``I = c e^{-z/tau} + fog (1 - e^{-z/tau})``.
    """
    f = W * rng.uniform(0.9, 1.1)
    cy, cx = H / 2 + rng.uniform(-6, 6), W / 2 + rng.uniform(-6, 6)
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    yn, xn = (v + 0.5 - cy) / f, (u + 0.5 - cx) / f  # ray direction (xn, yn, 1); y points down
    cam, room_h = rng.uniform(1.2, 1.7), rng.uniform(2.6, 3.2)
    half_w, back = rng.uniform(1.8, 3.2), rng.uniform(6.0, 9.5)
    x_off = rng.uniform(-0.6, 0.6)
    big = np.float32(1e9)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_floor = np.where(yn > 0, cam / yn, big)
        z_ceil = np.where(yn < 0, (room_h - cam) / -yn, big)
        z_left = np.where(xn < 0, (half_w + x_off) / -xn, big)
        z_right = np.where(xn > 0, (half_w - x_off) / xn, big)
    z_back = np.full((H, W), back, np.float32)
    stack = np.stack([z_floor, z_ceil, z_left, z_right, z_back])  # 5 surfaces
    surf = stack.argmin(0)
    z = stack.min(0)
    # world coordinates of the hit point (for textures)
    X, Y = xn * z + x_off, yn * z
    tex_coords = [(X, z), (X, z), (Y, z), (Y, z), (X, Y)]
    albedo = rng.uniform(0.25, 0.95, size=(5, 3)).astype(np.float32)
    shade = np.array([1.0, 0.7, 0.85, 0.8, 0.9], np.float32) * rng.uniform(0.85, 1.1)
    img = np.zeros((H, W, 3), np.float32)
    for s in range(5):
        a, b = tex_coords[s]
        period = rng.uniform(0.4, 0.9)
        tex = 0.75 + 0.25 * (((np.floor(a / period) + np.floor(b / period)) % 2) * 2 - 1)
        m = surf == s
        img[m] = albedo[s] * tex[m, None] * shade[s]
    # boxes standing on the floor, front faces parallel to the image plane
    for _ in range(int(rng.integers(0, 4))):
        zb = np.float32(rng.uniform(1.2, back - 1.0))
        bw, bh = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.6)
        bx = rng.uniform(-half_w + x_off + bw / 2, half_w + x_off - bw / 2) if half_w > bw else x_off
        # pixel rows/cols of the face: world y from cam (floor) to cam - bh; world x bx +- bw/2
        top, bottom = cy + f * (cam - bh) / zb - 0.5, cy + f * cam / zb - 0.5
        left, right = cx + f * (bx - x_off - bw / 2) / zb - 0.5, cx + f * (bx - x_off + bw / 2) / zb - 0.5
        m = (v >= top) & (v < bottom) & (u >= left) & (u < right) & (z > zb)
        if not m.any():
            continue
        col = rng.uniform(0.2, 1.0, size=3).astype(np.float32)
        stripes = 0.8 + 0.2 * np.sign(np.sin(2 * np.pi * (Y / rng.uniform(0.15, 0.4))))
        z = np.where(m, zb, z)
        img[m] = col * stripes[m, None]
    tau = rng.uniform(3.5, 5.0)
    t = np.exp(-z / tau)[..., None]
    fog = FOG * rng.uniform(0.95, 1.05)
    img = img * t + fog * (1 - t)
    img += rng.normal(0, 0.01, size=img.shape).astype(np.float32)
    return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8), z.astype(np.float32)


# ----------------------------------------------------------------------------- folder layouts
def _inside(root: Path, rel: str, where: str) -> str:
    """``rel`` as a path under ``root`` (a leading '/' is relative to root); refuses paths that leave it."""
    r = rel.lstrip("/")
    full = (root / r).resolve()
    if not full.is_relative_to(root.resolve()):
        raise DataError(f"{where}: path {rel!r} leaves the dataset folder {root}")
    return r


def _read_list(root: Path, list_file: Path) -> tuple[list[str], list[str]]:
    images, depths = [], []
    lines = read_text(list_file, "split file", LIST_BYTES, error=DataError).splitlines()
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{list_file}:{n}: expected 'rgb_path depth_path [focal]', got {line!r}")
        if parts[1] == "None":  # BTS train lists mark frames without ground truth this way
            continue
        where = f"{list_file}:{n}"
        images.append(_inside(root, parts[0], where))
        depths.append(_inside(root, parts[1], where))
    if not images:
        raise DataError(f"split file {list_file} lists no image/depth pairs")
    missing = [p for p in images[:50] + depths[:50] if not (root / p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} file(s) named in {list_file} are missing under {root}, e.g. {missing[:2]}")
    return images, depths


def _pair_folder(root: Path, img_dir: Path, depth_dir: Path) -> tuple[list[str], list[str]]:
    depth = {p.stem: p for p in sorted(depth_dir.iterdir()) if p.is_file() and p.suffix.lower() in DEPTH_EXTS}
    imgs = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not imgs:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    missing = [p.name for p in imgs if p.stem not in depth]
    if missing:
        raise DataError(f"{len(missing)} image(s) in {img_dir} have no depth map (.png/.npy) with the same stem "
                        f"in {depth_dir}, e.g. {missing[:3]}")
    return [str(p.relative_to(root)) for p in imgs], [str(depth[p.stem].relative_to(root)) for p in imgs]


def open_depth_dataset(spec, split: str = "train", depth_scale=None, split_file=None) -> DepthDataset:
    """Open a depth dataset (see the module docstring for the layouts).

    ``spec``: ``"sample:depth[/train|/val]"`` | a NYUv2 root (list files or mmseg layout) | a folder with
    ``images/`` + ``depth/``. ``split``: "train" | "val" | "test" ("val" is NYUv2's Eigen test split).
    ``depth_scale``: raw depth value per metre (default 1000 for PNG, 1 for .npy). ``split_file``: a list file
    (``rgb depth [focal]`` per line) to use instead of the standard NYUv2 list names.
    """
    if isinstance(spec, DepthDataset):
        return spec
    s = str(spec)
    if s.startswith("sample:"):
        name, _, sp = s[len("sample:"):].partition("/")
        if name != "depth":
            raise DataError(f"unknown depth sample {s!r}; expected 'sample:depth/train' or 'sample:depth/val'")
        return SampleDepthDataset(sp or ("val" if split == "test" else split))
    from .detect import refuse_image_only_source

    refuse_image_only_source(s, "depth estimation")
    root = Path(s)
    if not root.is_dir():
        raise DataError(f"depth dataset not found: {root} (expected a folder or 'sample:depth/...')")
    if split not in _NYU_SPLITS:
        raise DataError(f"split {split!r}: expected one of {sorted(_NYU_SPLITS)}")
    nyu_split = _NYU_SPLITS[split]
    if split_file is not None:
        lf = Path(split_file)
        lf = lf if lf.is_absolute() or lf.exists() else root / lf
        if not lf.is_file():
            raise DataError(f"split file not found: {split_file}")
        images, depths = _read_list(root, lf)
        return DepthDataset(root, images, depths, depth_scale, f"list/{lf.name}", "eigen")
    if (root / NYU_LISTS[nyu_split]).is_file():
        images, depths = _read_list(root, root / NYU_LISTS[nyu_split])
        return DepthDataset(root, images, depths, depth_scale, f"nyu/{nyu_split}", "eigen")
    if (root / "images" / nyu_split).is_dir() and (root / "annotations" / nyu_split).is_dir():
        images, depths = _pair_folder(root, root / "images" / nyu_split, root / "annotations" / nyu_split)
        return DepthDataset(root, images, depths, depth_scale, f"nyu-mmseg/{nyu_split}", "eigen")
    img_dir, depth_dir = root / "images", root / "depth"
    if not img_dir.is_dir() or not depth_dir.is_dir():
        raise DataError(f"{root} is neither a NYUv2 root ({NYU_LISTS['test']} or images/test + annotations/test) "
                        "nor a folder with images/ and depth/ subfolders")
    for cand in (split, nyu_split):
        if (img_dir / cand).is_dir():
            img_dir, depth_dir = img_dir / cand, depth_dir / cand
            break
    images, depths = _pair_folder(root, img_dir, depth_dir)
    return DepthDataset(root, images, depths, depth_scale, f"folder/{img_dir.name}", None)


def write_depth_folder(ds: DepthDataset, out, layout: str = "folder", split: str = "train",
                       image_ext: str = ".png", overwrite: bool = False) -> Path:
    """Write ``ds`` as image/depth pairs (depth as uint16 millimetre PNGs): ``layout='folder'`` (images/ +
    depth/) or ``'nyu-mmseg'`` (images/<train|test>/ + annotations/<train|test>/). Images are lossless PNG
    unless ``image_ext=".jpg"`` (what mmseg's NYUDataset reads). Every file is checked before any is written:
    one svgfeat did not write is refused unless ``overwrite``; each is written whole or not at all."""
    from ..atomic import write_bytes_atomic
    from ..outputs import check_outputs
    from ..picture_files import encode_image

    out = Path(out)
    if layout == "folder":
        img_dir, depth_dir = out / "images", out / "depth"
    elif layout == "nyu-mmseg":
        sub = _NYU_SPLITS.get(split, split)
        img_dir, depth_dir = out / "images" / sub, out / "annotations" / sub
    else:
        raise DataError(f"layout {layout!r}: expected 'folder' or 'nyu-mmseg'")
    stems = [Path(p).name.rsplit(".", 1)[0] for p in ds.paths]
    check_outputs([d / f"{s}{x}" for s in stems for d, x in ((img_dir, image_ext), (depth_dir, ".png"))], overwrite)
    for i, stem in enumerate(stems):
        img, depth = ds.load_pair(i)
        write_bytes_atomic(img_dir / f"{stem}{image_ext}", encode_image(img, image_ext), durable=False)
        mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        write_bytes_atomic(depth_dir / f"{stem}.png", encode_image(Image.fromarray(mm), ".png"), durable=False)
    return out


# ----------------------------------------------------------------------------- geometry
def crop_pair(img: Image.Image, depth: np.ndarray, box) -> tuple[Image.Image, np.ndarray]:
    """Crop (top, left, height, width) from both."""
    y, x, h, w = box
    return img.crop((x, y, x + w, y + h)), depth[y:y + h, x:x + w]


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a depth map to ``size`` = (w, h) (keeps invalid zeros exact)."""
    if (depth.shape[1], depth.shape[0]) == tuple(size):
        return depth
    return np.asarray(Image.fromarray(depth.astype(np.float32), "F").resize(tuple(size), Image.NEAREST))


def transform_depth(depth: np.ndarray, spec: dict) -> np.ndarray:
    """Apply the geometry of a cache's image transform (presets 'none' / 'resize', optional hflip) to a depth
    map with nearest-neighbour resampling, so depth lines up with cached features."""
    preset, size = spec.get("preset", "none"), int(spec.get("size", 0) or 0)
    if preset == "resize":
        depth = resize_depth(depth, (size, size))
    elif preset != "none":
        raise DataError(f"depth training from a cache needs preset 'none' or 'resize', the cache used {preset!r} "
                        "(a crop would cut depth the features do not see consistently)")
    if spec.get("hflip"):
        depth = depth[:, ::-1]
    return np.ascontiguousarray(depth)


class DepthTrainAugment:
    """DINOv3's NYUv2 training transform on one (image, depth) pair; picklable (DataLoader workers).

    Random brightness x U(brightness) (DINOv3 ``brightness_range`` 0.75-1.25; None = off), random crop
    ``crop`` = (h, w) (416 x 544), horizontal flip (p 0.5); images smaller than the crop are padded (image 0
    after normalisation, depth 0 = ignored). Returns (float32 [3, h, w] ImageNet-normalised, float32 [h, w]).
    """

    def __init__(self, crop=(416, 544), flip: bool = True, brightness=(0.75, 1.25)):
        self.crop = (int(crop[0]), int(crop[1]))
        self.flip = bool(flip)
        self.brightness = tuple(brightness) if brightness else None

    def __call__(self, img: Image.Image, depth: np.ndarray, rng: np.random.Generator):
        import torch

        from .transforms import normalize

        H, W = depth.shape
        ch, cw = min(self.crop[0], H), min(self.crop[1], W)
        y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
        a = np.asarray(img)[y:y + ch, x:x + cw]
        d = depth[y:y + ch, x:x + cw]
        if self.brightness is not None:
            a = np.clip(a.astype(np.float32) * rng.uniform(*self.brightness), 0, 255).astype(np.uint8)
        xi = normalize(np.ascontiguousarray(a))
        if self.flip and rng.random() < 0.5:
            xi, d = xi.flip(-1), d[:, ::-1]
        out = np.zeros(self.crop, np.float32)
        out[:ch, :cw] = d
        if (ch, cw) != self.crop:
            pad = torch.zeros(3, *self.crop)
            pad[:, :ch, :cw] = xi
            xi = pad
        return xi.contiguous(), out
