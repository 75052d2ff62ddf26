"""Datasets: ImageNet-style class folders, flat folder + label file, plain folders, file lists, samples.

Every dataset exposes ``root``, ``paths`` (relative to root, or sample ids), ``labels`` (np.int64, -1 when
unlabelled), ``classes`` and ``load(i) -> PIL RGB`` (raising :class:`DecodeError`). Order is deterministic
(sorted paths), so the same spec always yields the same rows.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..regular_files import LIST_BYTES, read_text
from . import sample as _sample
from .decode import DecodeError, load_image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageDataset:
    """A list of image files (relative ``paths`` under ``root``) with optional labels."""

    kind = "files"

    def __init__(self, root, paths, labels=None, classes=None, spec=None):
        self.root = str(Path(root).resolve()) if root is not None else ""
        self.paths = [str(p) for p in paths]
        # names that are not valid UTF-8 are kept (escaped) and fail to load with reason 'undecodable-name'
        escaped = [escape_name(p) for p in self.paths]
        self.undecodable = {e for e in escaped if e is not None}
        self.paths = [p if e is None else e for p, e in zip(self.paths, escaped)]
        self.labels = (np.full(len(self.paths), -1, dtype=np.int64) if labels is None
                       else np.asarray(labels, dtype=np.int64))
        if len(self.labels) != len(self.paths):
            raise DataError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.classes = list(classes or [])
        self.spec = spec or self.root

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i])

    def load(self, i: int, draft: int | None = None):
        if self.paths[i] in self.undecodable:
            raise DecodeError(self.paths[i], "undecodable-name", "the file name is not valid UTF-8")
        return load_image(self.abspath(i), draft=draft)

    def read_bytes(self, i: int) -> bytes:
        """The encoded bytes of item ``i`` (device decoding, content hashes)."""
        with open(self.abspath(i), "rb") as f:
            return f.read()

    def item_stat(self, i: int) -> list | None:
        """``[size, mtime_ns]`` of the file holding item ``i`` (see :mod:`.fingerprint`)."""
        from .fingerprint import stat_fingerprint

        return stat_fingerprint(self.abspath(i))

    def fingerprint(self) -> str:
        """sha256 of the ordered (path, label) list: identifies the file list in cache manifests."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels.tolist()):
            h.update(os.fsencode(p) + f"\t{y}\n".encode())  # fsencode: any file name hashes, even undecodable
        return h.hexdigest()

    def describe(self) -> dict:
        return {"spec": str(self.spec), "kind": self.kind, "root": self.root, "num_items": len(self),
                "classes": self.classes, "fingerprint": self.fingerprint()}


class SampleDigits(ImageDataset):
    kind = "sample"

    def __init__(self, split: str):
        images, target = _sample.load_digits()
        idx = _sample.digits_split(split)
        self._images = images[idx]
        super().__init__(None, [f"digits/{split}/{i:04d}" for i in idx], target[idx],
                         [str(c) for c in range(10)], spec=f"sample:digits/{split}")
        self.root = "sample:"

    def abspath(self, i):
        return f"sample:{self.paths[i]}"

    def load(self, i, draft=None):
        return _sample.digit_image(self._images[i])

    def item_stat(self, i):
        return None  # embedded: cannot change


class SamplePhotos(ImageDataset):
    kind = "sample"

    def __init__(self):
        names = _sample.available_photos()
        super().__init__(None, [f"photos/{n}" for n in names], None, [], spec="sample:photos")
        self.root = "sample:"

    def abspath(self, i):
        return f"sample:{self.paths[i]}"

    def load(self, i, draft=None):
        return _sample.photo(self.paths[i].split("/", 1)[1])

    def item_stat(self, i):
        return None  # embedded: cannot change


def escape_name(name: str) -> str | None:
    """None for a name that is valid UTF-8; else the name with its undecodable bytes (surrogate escapes from
    ``os.walk``) written as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def _list_images(folder: Path, seen: set | None = None) -> list[str]:
    """Image files under ``folder`` (relative paths, sorted). Symlinked folders are followed once: every real
    folder is visited at most once (``seen``: real paths already walked), so symlink loops neither duplicate
    images nor hang the walk."""
    out = []
    seen = set() if seen is None else seen
    seen.add(os.path.realpath(folder))
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, f), folder))
    return sorted(out)


def class_folders(root) -> ImageDataset:
    """``root/<class>/**/*.ext`` (ImageNet ``train/<wnid>/*.JPEG``); classes sorted by name."""
    root = Path(root)
    seen = {os.path.realpath(root)}
    classes = []
    for d in sorted(root.iterdir()):  # a class folder linking back to root or to another class is skipped
        if d.is_dir() and not d.name.startswith(".") and os.path.realpath(d) not in seen:
            seen.add(os.path.realpath(d))
            classes.append(d.name)
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = _list_images(root / c, seen)
        paths += [f"{c}/{f}" for f in files]
        labels += [ci] * len(files)
    if not paths:
        raise DataError(f"no images found under the class folders of {root}")
    return ImageDataset(root, paths, labels, classes, spec=str(root))


def plain_folder(root) -> ImageDataset:
    files = _list_images(Path(root))
    if not files:
        raise DataError(f"no images (extensions {sorted(IMAGE_EXTENSIONS)}) found under {root}")
    ds = ImageDataset(root, files, None, [], spec=str(root))
    ds.kind = "folder"
    return ds


def _parse_label(tok: str, classes: list[str], path: str) -> int:
    if tok in classes:
        return classes.index(tok)
    try:
        return int(tok)
    except ValueError:
        raise DataError(f"label {tok!r} of {path} is neither an integer nor a known class") from None


def file_list(list_file, classes=None) -> ImageDataset:
    """Text file, one ``path [label]`` per line; relative paths are resolved against the file's folder."""
    lf = Path(list_file)
    classes = list(classes or [])
    paths, labels, any_label = [], [], False
    for ln, line in enumerate(read_text(lf, "file list", LIST_BYTES, error=DataError).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1) if len(line.split()) > 1 else [line]
        path = parts[0]
        if len(parts) == 2:
            labels.append(_parse_label(parts[1], classes, f"{lf}:{ln}"))
            any_label = True
        else:
            labels.append(-1)
        paths.append(path)
    if not paths:
        raise DataError(f"file list {lf} is empty")
    root = lf.parent.resolve()
    ds = ImageDataset(root, paths, labels if any_label else None, classes, spec=str(lf))
    ds.kind = "list"
    return ds


def flat_with_labels(folder, label_file, classes=None) -> ImageDataset:
    """ImageNet-style flat ``val/`` folder plus a label file with ``filename label`` lines
    (label = class name such as a wnid, or an integer index)."""
    classes = list(classes or [])
    mapping = {}
    for line in read_text(label_file, "label file", LIST_BYTES, error=DataError).splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 2 and not parts[0].lower().startswith(("imageid", "#")):
            mapping[Path(parts[0]).stem] = parts[1]
    files = _list_images(Path(folder))
    missing = [f for f in files if Path(f).stem not in mapping]
    if missing:
        raise DataError(f"{len(missing)} image(s) in {folder} have no label in {label_file}, e.g. {missing[0]}")
    labels = [_parse_label(mapping[Path(f).stem], classes, f) for f in files]
    ds = ImageDataset(folder, files, labels, classes, spec=str(folder))
    ds.kind = "flat+labels"
    return ds
