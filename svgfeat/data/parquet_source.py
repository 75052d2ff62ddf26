"""Hugging Face style tables: parquet files (``ILSVRC/imagenet-1k``: ``data/train-00000-of-00294.parquet``)
and ``datasets.save_to_disk`` folders (arrow stream files + ``state.json`` + ``dataset_info.json``).

Columns: ``image`` (a struct ``{bytes, path}`` or plain binary) and ``label`` (integers; class names from the
``ClassLabel`` in the schema's Hugging Face metadata when present). Opening reads only the footers and the
label / path columns; images are read one row group (parquet) or record batch (arrow, memory-mapped) at a
time, and each process keeps only the chunk it is reading. Needs ``pyarrow`` (``pip install "svgfeat[hf]"``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .container import ContainerDataset, common_root, files_of

SPLIT_FILE = re.compile(r"^(?P<split>.+?)-\d+-of-\d+\.(parquet|arrow)$")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError('reading parquet / arrow datasets needs pyarrow: pip install "svgfeat[hf]"') from None
    return pyarrow


def hf_classes(metadata, label_col: str = "label") -> list[str]:
    """Class names of the ``ClassLabel`` feature ``label_col`` in Hugging Face metadata (schema metadata
    bytes or a ``dataset_info.json`` dict); [] when absent."""
    try:
        if isinstance(metadata, dict) and b"huggingface" in metadata:
            metadata = json.loads(metadata[b"huggingface"].decode("utf-8"))
        info = metadata.get("info", metadata) if isinstance(metadata, dict) else {}
        feat = (info.get("features") or {}).get(label_col) or {}
        names = feat.get("names") if feat.get("_type") == "ClassLabel" else None
        return [str(n) for n in names] if isinstance(names, list) else []
    except (ValueError, UnicodeDecodeError, AttributeError):
        return []


def splits_in(files) -> list[str]:
    return sorted({m.group("split") for f in files if (m := SPLIT_FILE.match(os.path.basename(f)))})


def one_split(files, where) -> list[str]:
    splits = splits_in(files)
    if len(splits) > 1:
        raise DataError(f"{where} holds the splits {', '.join(splits)}; pick one, e.g. "
                        f"{os.path.join(str(where), splits[0] + '-*.parquet')}")
    return files


class TableDataset(ContainerDataset):
    """Rows of parquet or arrow files. ``chunks[f]``: row counts of file f's row groups / record batches."""

    kind = "parquet"

    def __init__(self, files, spec, fmt: str, info=None):
        pa = _pyarrow()
        self.fmt = fmt
        keys, labels, file_of, chunk_of, row_of, classes = [], [], [], [], [], []
        self.image_col, self.label_col = "image", "label"
        for k, path in enumerate(files):
            table, schema, counts = self._scan(pa, path)
            cols = schema.names
            if self.image_col not in cols:
                raise DataError(f"{path} has no 'image' column (columns: {', '.join(cols)}); expected image "
                                "({bytes, path}) and label")
            if self.label_col not in cols:
                raise DataError(f"{path} has no 'label' column (columns: {', '.join(cols)}); expected image "
                                "({bytes, path}) and label")
            if not pa.types.is_integer(schema.field(self.label_col).type):
                raise DataError(f"{path}: column 'label' is {schema.field(self.label_col).type}, expected integers")
            classes = classes or hf_classes(schema.metadata or {}) or hf_classes(info or {})
            lab = table.column(self.label_col).to_numpy(zero_copy_only=False)
            lab = np.where(np.isnan(lab.astype(np.float64)), -1, lab).astype(np.int64) if lab.dtype.kind == "f" else lab
            name = os.path.relpath(path, common_root(files))
            paths = self._paths(pa, table, schema)
            keys += [f"{name}:{p if p else r}" for r, p in enumerate(paths)]
            labels.append(np.asarray(lab, dtype=np.int64))
            for c, n in enumerate(counts):
                file_of.append(np.full(n, k, np.int32))
                chunk_of.append(np.full(n, c, np.int32))
                row_of.append(np.arange(n, dtype=np.int32))
        labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if not classes and len(labels):
            classes = [str(c) for c in range(int(labels.max()) + 1)]
        cat = lambda a: np.concatenate(a) if a else np.zeros(0, np.int32)  # noqa: E731
        super().__init__(common_root(files), files, keys, labels, classes, cat(file_of), spec)
        self.chunk_of, self.row_of = cat(chunk_of), cat(row_of)
        self._current = (None, None)  # ((file, chunk), image column) read by this process

    def _scan(self, pa, path):
        """(table of the label and image-path columns, schema, rows per chunk) of one file."""
        if self.fmt == "parquet":
            try:
                pf = pa.parquet.ParquetFile(path)
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{path} is not a readable parquet file ({e})") from None
            schema = pf.schema_arrow
            cols = [self.label_col] + ([self._path_col(pa, schema)] if self._path_col(pa, schema) else [])
            table = pf.read(columns=cols) if self.label_col in schema.names else None
            counts = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            return table, schema, counts
        try:
            with pa.memory_map(path) as mm:
                reader = pa.ipc.open_stream(mm)
                batches = list(reader)
                schema = reader.schema
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path} is not a readable arrow stream file ({e})") from None
        keep = [c for c in (self.label_col, self.image_col) if c in schema.names]
        table = pa.Table.from_batches([b.select(keep) for b in batches], schema=pa.schema(
            [schema.field(c) for c in keep])) if batches else pa.Table.from_pylist([], pa.schema(
                [schema.field(c) for c in keep]))
        return table, schema, [b.num_rows for b in batches]

    def _path_col(self, pa, schema):
        if self.image_col in schema.names and pa.types.is_struct(schema.field(self.image_col).type):
            t = schema.field(self.image_col).type
            if any(t.field(j).name == "path" for j in range(t.num_fields)):
                return f"{self.image_col}.path"
        return None

    def _paths(self, pa, table, schema) -> list:
        if table is None or self.image_col not in table.column_names or self._path_col(pa, schema) is None:
            return [None] * (0 if table is None else table.num_rows)
        out = []  # chunk by chunk: the image bytes of a memory-mapped arrow file are never copied
        for chunk in table.column(self.image_col).chunks:
            out += chunk.field("path").to_pylist()
        return out

    def _chunk(self, f: int, c: int):
        pa = _pyarrow()
        path = self.files[f]
        if self.fmt == "parquet":
            col = pa.parquet.ParquetFile(path).read_row_group(c, columns=[self.image_col]).column(self.image_col)
        else:
            with pa.memory_map(path) as mm:
                reader = pa.ipc.open_stream(mm)
                for j, b in enumerate(reader):
                    if j == c:
                        col = b.column(self.image_col)
                        break
                else:
                    raise OSError(f"{path} has fewer record batches than when it was opened")
        col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
        return col.field("bytes") if pa.types.is_struct(col.type) else col

    def read_bytes(self, i: int) -> bytes:
        where = (int(self.file_of[i]), int(self.chunk_of[i]))
        if self._current[0] != where:
            self._current = (None, None)  # drop the previous chunk before reading the next
            self._current = (where, self._chunk(*where))
        v = self._current[1][int(self.row_of[i])].as_py()
        if v is None:
            raise OSError(f"{self.paths[i]} has no image bytes")
        return bytes(v)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_current"] = (None, None)
        return d

    def columns(self) -> dict:
        return {"image": f"{self.image_col}.bytes", "label": self.label_col}


def open_parquet(spec) -> TableDataset:
    return TableDataset(files_of(spec, (".parquet",), in_folder=one_split), str(spec), "parquet")


def is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def open_saved(spec) -> TableDataset:
    """A ``save_to_disk`` folder: ``state.json`` lists the arrow files, ``dataset_info.json`` the features."""
    p = Path(spec)
    if (p / "dataset_dict.json").is_file() and not (p / "state.json").is_file():
        splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
        raise DataError(f"{p} is a saved DatasetDict with splits {', '.join(splits) or '(none)'}; pass one split "
                        f"folder, e.g. {p / (splits[0] if splits else 'train')}")
    try:
        state = json.loads((p / "state.json").read_text(encoding="utf-8"))
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{p / 'state.json'} is not a datasets state file ({e}); expected _data_files") from None
    files = []
    for n in names:
        f = (p / n)
        if not isinstance(n, str) or "/" in n or "\\" in n or n.startswith(".") or not f.is_file():
            raise DataError(f"{p / 'state.json'} names {n!r}, which is not an arrow file in {p}")
        files.append(str(f.resolve()))
    info = {}
    try:
        info = json.loads((p / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    ds = TableDataset(files, str(spec), "arrow", info=info)
    ds.kind = "arrow"
    return ds
