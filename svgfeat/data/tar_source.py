"""WebDataset tar shards (``timm/imagenet-1k-wds``: ``KEY.jpg`` + ``KEY.cls`` + ``KEY.json``), stdlib only.

Each shard's member index (sample key, image offset and size, label) is built once by reading the tar
headers and the small label members, and kept in the svgfeat index folder (``$SVGFEAT_INDEX_DIR``, default
``~/.cache/svgfeat/source-index``; never beside the data), keyed by the shard's path, size and mtime. Images
are then read by offset (``os.pread``) through a small per-process pool of open files, so workers have random
access, resume skips without re-reading, and 1,252 shards never mean 1,252 open files.

Samples are taken in shard order, then in the order of their first member inside the shard. A sample without
an image (``.jpg/.jpeg/.png/.webp``) and a shard that ends inside a member are recorded failures.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections import OrderedDict
from pathlib import Path

from ..errors import DataError
from .container import ContainerDataset, common_root, files_of

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_VERSION = 2
MAX_OPEN = 8
MAX_LABEL_BYTES = 1 << 20


def index_dir() -> Path:
    env = os.environ.get("SVGFEAT_INDEX_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "svgfeat" / "source-index"


def _parse_label(ext: str, blob: bytes) -> int | None:
    try:
        if ext == "cls":
            return int(blob.decode("utf-8").strip())
        v = json.loads(blob.decode("utf-8")).get("label")
        return int(v) if isinstance(v, (int, str)) and str(v).strip().lstrip("-").isdigit() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def scan_tar(path: str) -> list:
    """``[[key, offset, size, label, failure-or-None], ...]`` of one shard (headers + label members only)."""
    size = os.path.getsize(path)
    if size == 0:
        return [["<empty>", -1, 0, -1, ["empty-file", "the tar shard is empty"]]]
    samples: "OrderedDict[str, dict]" = OrderedDict()
    end_reason = None
    with open(path, "rb") as raw:
        try:
            tf = tarfile.open(fileobj=raw, mode="r:")
        except tarfile.ReadError as e:
            raise DataError(f"{path} is not an uncompressed tar file ({e}); expected WebDataset .tar shards") from None
        try:
            while True:
                m = tf.next()
                if m is None:
                    break
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = m.name[: len(m.name) - len(base)] + stem
                s = samples.setdefault(key, {"exts": []})
                ext = ext.lower()
                s["exts"].append(ext)
                if m.offset_data + m.size > size:
                    end_reason = f"the shard ends inside member {m.name}"
                    s["truncated"] = True
                elif ext in IMAGE_EXTS and "img" not in s:
                    s["img"] = (m.offset_data, m.size)
                elif ext in ("cls", "json") and m.size <= MAX_LABEL_BYTES and s.get("label") is None:
                    raw.seek(m.offset_data)
                    s["label"] = _parse_label(ext, raw.read(m.size))
            if tf.offset + 2 * tarfile.BLOCKSIZE > size and end_reason is None:
                end_reason = "the shard has no end-of-archive marker"
        except tarfile.ReadError as e:
            end_reason = f"unreadable after {len(samples)} sample(s): {e}"
    out = []
    for key, s in samples.items():
        label = s.get("label")
        label = -1 if label is None else label
        if "img" in s:
            out.append([key, s["img"][0], s["img"][1], label, None])
        elif s.get("truncated"):
            out.append([key, -1, 0, label, ["truncated", end_reason]])
        else:
            out.append([key, -1, 0, label, ["no-image", f"sample has only .{', .'.join(s['exts'])} "
                                                        f"(expected .{', .'.join(IMAGE_EXTS)})"]])
    if end_reason and not any(r[4] and r[4][0] == "truncated" for r in out):
        out.append(["<end>", -1, 0, -1, ["truncated", end_reason]])
    return out


def _index_file(path: str) -> tuple[Path, dict]:
    st = os.stat(path)
    ident = {"version": INDEX_VERSION, "path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    return index_dir() / f"tar-{digest}.json", ident


def tar_index(path: str) -> list:
    """The member index of one shard: read from the index folder when the shard is unchanged, else built and
    stored there (never inside the data folder; an unwritable index folder only costs the re-scan)."""
    f, ident = _index_file(path)
    try:
        with open(f, encoding="utf-8") as fh:
            saved = json.load(fh)
        if isinstance(saved, dict) and saved.get("ident") == ident and isinstance(saved.get("samples"), list):
            return saved["samples"]
    except (OSError, ValueError):
        pass
    samples = scan_tar(path)
    data_dir = Path(path).resolve().parent
    idx_dir = f.parent.resolve() if f.parent.exists() else f.parent.absolute()
    if idx_dir != data_dir and data_dir not in idx_dir.parents:
        try:
            from ..atomic import write_json_atomic

            f.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(f, {"ident": ident, "samples": samples}, durable=False)  # a cache: rebuilt if lost
        except OSError:
            pass
    return samples


class _Files:
    """A per-process pool of at most ``MAX_OPEN`` read-only file descriptors (least recently used closed)."""

    def __init__(self):
        self.pid, self.fds = os.getpid(), OrderedDict()

    def fd(self, path: str) -> int:
        if self.pid != os.getpid():  # forked worker: the parent's descriptors are not ours to share
            self.pid, self.fds = os.getpid(), OrderedDict()
        fd = self.fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            while len(self.fds) >= MAX_OPEN:
                os.close(self.fds.popitem(last=False)[1])
        self.fds[path] = fd
        return fd

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.pid, self.fds = os.getpid(), OrderedDict()


class TarDataset(ContainerDataset):
    kind = "wds"

    def __init__(self, files, spec):
        import numpy as np

        keys, labels, file_of, offsets, sizes, missing = [], [], [], [], [], {}
        root = common_root(files)
        for k, path in enumerate(files):
            name = os.path.relpath(path, root)
            for key, off, size, label, fail in tar_index(path):
                if fail:
                    missing[len(keys)] = tuple(fail)
                keys.append(f"{name}:{key}")
                labels.append(label)
                file_of.append(k)
                offsets.append(off)
                sizes.append(size)
        top = max(labels, default=-1)
        classes = [str(c) for c in range(top + 1)]
        super().__init__(root, files, keys, labels, classes, file_of, spec, missing)
        self.offsets, self.sizes = np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
        self._files = _Files()

    def read_bytes(self, i: int) -> bytes:
        if i in self.missing:
            raise OSError(f"{self.paths[i]} has no image ({self.missing[i][0]})")
        fd = self._files.fd(self.files[self.file_of[i]])
        n = int(self.sizes[i])
        blob = os.pread(fd, n, int(self.offsets[i]))
        if len(blob) != n:
            raise OSError(f"{self.paths[i]}: read {len(blob)} of {n} bytes (the shard changed or was truncated)")
        return blob

    def columns(self) -> dict:
        return {"image": "." + "|.".join(IMAGE_EXTS), "label": ".cls|.json:label"}


def open_tar(spec) -> TarDataset:
    files = files_of(spec, (".tar",))
    return TarDataset(files, str(spec))
