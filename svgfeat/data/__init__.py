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
from .detect import detect_format

__all__ = ["open_dataset", "ImageDataset", "DecodeError", "load_image", "FORMATS"]

FORMATS = ("folder", "filelist", "wds", "parquet", "hf")


def open_dataset(spec, labels=None, classes=None, format: str | None = None) -> ImageDataset:
    """Open a dataset from a spec (``format`` overrides the detection: one of :data:`FORMATS`).

    - ``sample:digits/train``, ``sample:digits/val``, ``sample:photos``: embedded samples (no download);
    - a folder whose sub-folders hold images: class folders (ImageNet ``train/``), classes sorted;
    - a folder of images (recursive) without class sub-folders: unlabelled, or labelled with
      ``labels=FILE`` (flat ImageNet ``val/`` + ground-truth file; pass ``classes`` from train);
    - a ``.txt`` file list (``path [label]`` per line);
    - WebDataset tar shards: one ``.tar``, ``train-{0000..0003}.tar``, a glob, or a folder holding only tars;
    - parquet files (one, a glob, or a folder of one split), a ``save_to_disk`` folder, or
      ``hf://datasets/ORG/NAME[@REV][/SPLIT]`` from the local Hugging Face cache;
    - an :class:`ImageDataset` is returned as is.
    """
    if isinstance(spec, ImageDataset):
        return spec
    s = str(spec)
    if not s:
        raise DataError("empty dataset spec: expected a folder, file list, tar shards, parquet files or sample:...")
    if format is not None and format not in FORMATS:
        raise DataError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    kind = format or detect_format(s)
    if labels is not None and kind not in ("folder", None):
        raise DataError(f"a label file only applies to a flat image folder; {s} is read as {kind}")
    if kind == "wds":
        from .tar_source import open_tar

        return open_tar(s)
    if kind in ("parquet", "hf"):
        from .hf_source import open_hf
        from .parquet_source import is_saved_dataset, open_parquet, open_saved

        if s.startswith("hf://"):
            return open_hf(s)
        if kind == "hf":
            raise DataError(f"{s}: --format hf expects hf://datasets/ORG/NAME[@REV][/SPLIT]")
        return open_saved(s) if is_saved_dataset(Path(s)) else open_parquet(s)
    if kind == "filelist":
        if not Path(s).is_file():
            raise DataError(f"file list not found: {s}")
        return file_list(Path(s), classes)
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
        raise DataError(f"dataset not found: {s} (expected a folder, a .txt file list, .tar shards, parquet files, "
                        "hf://datasets/ORG/NAME or sample:...)")
    if kind == "folder" and not p.is_dir():
        raise DataError(f"--format folder: {s} is not a folder")
    if not p.is_dir():  # a file list; a FIFO or device there is refused by file_list without blocking
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and kind is None:
            return ImageDataset(p.parent, [p.name], None, [], spec=s)
        return file_list(p, classes)
    if labels is not None:
        return flat_with_labels(p, labels, classes)
    subdirs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    direct_images = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if subdirs and not direct_images:
        return class_folders(p)
    return plain_folder(p)
