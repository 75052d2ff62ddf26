"""Base of the sources whose items live inside a few large files (tar shards, parquet / arrow files).

Items keep the :class:`~svgfeat.data.datasets.ImageDataset` contract (``paths`` = item keys, ``labels``,
``classes``, ``load(i)``, ``read_bytes(i)``, a deterministic order and a known length), so extraction, resume,
``--limit``, torchrun slicing and failures work as for folders. An item's fingerprint is the stat of the file
holding it; the manifest records every file with its size, mtime and row count.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import ImageDataset
from .decode import DecodeError, load_image
from .fingerprint import file_stats, stat_fingerprint


class ContainerDataset(ImageDataset):
    """Items of ``files`` (absolute paths); ``file_of[i]`` is the file holding item i; ``missing[i]`` (a
    reason) marks items that have no image (they fail with that reason)."""

    def __init__(self, root, files, keys, labels, classes, file_of, spec, missing=None):
        super().__init__(root, keys, labels, classes, spec=spec)
        self.files = [str(f) for f in files]
        self.file_of = np.asarray(file_of, dtype=np.int32)
        self.missing = dict(missing or {})
        self.rows = np.bincount(self.file_of, minlength=len(self.files)).tolist() if len(self.file_of) else [0] * len(
            self.files)

    def abspath(self, i: int) -> str:
        return f"{self.files[self.file_of[i]]}:{self.paths[i]}"

    def item_stat(self, i: int) -> list:
        return stat_fingerprint(self.files[self.file_of[i]])

    def load(self, i: int, draft: int | None = None):
        if i in self.missing:
            raise DecodeError(self.paths[i], *self.missing[i])
        try:
            blob = self.read_bytes(i)
        except OSError as e:
            raise DecodeError(self.paths[i], "unreadable", e.strerror or str(e)) from None
        return load_image(blob, draft=draft)

    def read_bytes(self, i: int) -> bytes:  # pragma: no cover - every subclass reads its own way
        raise NotImplementedError

    def columns(self) -> dict:
        return {}

    def describe(self) -> dict:
        d = super().describe()
        d.update(files=file_stats(self.files, self.rows, self.root), columns=self.columns())
        return d


BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_pattern(spec: str) -> list[str] | None:
    """Files named by a brace pattern (``train-{0000..0003}.tar``) or a glob (``train-*.tar``), in order;
    None when ``spec`` is neither. A brace pattern must name existing files only."""
    m = BRACE.search(spec)
    if m:
        a, b = m.group(1), m.group(2)
        lo, hi = int(a), int(b)
        if hi < lo or hi - lo > 1_000_000:
            raise DataError(f"brace range {m.group(0)} in {spec}: expected {{FIRST..LAST}} with FIRST <= LAST")
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        names = [spec[:m.start()] + str(k).zfill(width) + spec[m.end():] for k in range(lo, hi + 1)]
        out = []
        for n in names:
            sub = expand_pattern(n)
            out += sub if sub is not None else [n]
        missing = [n for n in out if not os.path.isfile(n)]
        if missing:
            raise DataError(f"{len(missing)} file(s) of {spec} not found (first: {missing[0]})")
        return out
    if any(c in spec for c in "*?["):
        found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        if not found:
            raise DataError(f"no files match {spec}")
        return found
    return None


def files_of(spec, suffixes: tuple, in_folder=None) -> list[str]:
    """The files a spec names: one file, a pattern, or a folder holding only such files (sorted; ``in_folder(files,
    folder)`` may narrow a folder's listing or refuse it, e.g. a folder holding several splits)."""
    s = str(spec)
    found = expand_pattern(s)
    if found is None:
        p = Path(s)
        if p.is_file():
            found = [s]
        elif p.is_dir():
            found = folder_files(p, suffixes)
            found = in_folder(found, p) if in_folder else found
        else:
            raise DataError(f"dataset not found: {s}")
    bad = [f for f in found if not f.lower().endswith(suffixes)]
    if bad:
        raise DataError(f"{bad[0]} is not a {'/'.join(suffixes)} file (in {s}); expected {'/'.join(suffixes)} files only")
    return [os.path.abspath(f) for f in found]


def folder_files(folder: Path, suffixes: tuple) -> list[str]:
    files = sorted(str(f) for f in folder.iterdir() if not f.name.startswith(".") and f.is_file()
                   and f.name.lower().endswith(suffixes))
    if not files:
        raise DataError(f"no {'/'.join(suffixes)} files in {folder}")
    return files


def common_root(files) -> str:
    return os.path.commonpath([os.path.dirname(f) for f in files])
