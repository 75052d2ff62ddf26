"""Datasets and image decoding. ``open_dataset(spec)`` is the one entry point used by every command."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .datasets import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    SampleDigits,
    SamplePhotos,
    class_folders,
    file_list,
    flat_with_labels,
    plain_folder,
)
from .decode import DecodeError, load_image

__all__ = ["open_dataset", "ImageDataset", "DecodeError", "load_image"]


def open_dataset(spec, labels=None, classes=None) -> ImageDataset:
    """Open a dataset from a spec.

    - ``sample:digits/train``, ``sample:digits/val``, ``sample:photos``: embedded samples (no download);
    - a folder whose sub-folders hold images: class folders (ImageNet ``train/``), classes sorted;
    - a folder of images (recursive) without class sub-folders: unlabelled, or labelled with
      ``labels=FILE`` (flat ImageNet ``val/`` + ground-truth file; pass ``classes`` from train);
    - a ``.txt`` file list (``path [label]`` per line);
    - an :class:`ImageDataset` is returned as is.
    """
    if isinstance(spec, ImageDataset):
        return spec
    s = str(spec)
    if s.startswith("sample:"):
        name = s[len("sample:"):]
        if name in ("digits/train", "digits/val"):
            return SampleDigits(name.split("/")[1])
        if name == "photos":
            return SamplePhotos()
        if name.startswith("digitseg"):
            from .segmentation import open_seg_dataset

            return open_seg_dataset(s)
        if name.startswith("depth"):
            from .depth import open_depth_dataset

            return open_depth_dataset(s)
        raise DataError(f"unknown sample dataset {s!r}; expected sample:digits/train, sample:digits/val, "
                        "sample:photos, sample:digitseg/train|val or sample:depth/train|val")
    p = Path(s)
    if not p.exists():
        raise DataError(f"dataset not found: {s} (expected a folder, a .txt file list or sample:...)")
    if not p.is_dir():  # a file list; a FIFO or device there is refused by file_list without blocking
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageDataset(p.parent, [p.name], None, [], spec=s)
        return file_list(p, classes)
    if labels is not None:
        return flat_with_labels(p, labels, classes)
    subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    direct_images = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if subdirs and not direct_images:
        return class_folders(p)
    return plain_folder(p)
