"""The same real JPEGs (crops of scikit-image photographs) written as a class-folder tree, WebDataset tar
shards, parquet files (ILSVRC/imagenet-1k layout), a save_to_disk folder and a Hugging Face cache entry."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["n01440764", "n01443537", "n01484850"]
PHOTOS = ("astronaut", "coffee", "chelsea")


def jpegs(n: int = 24, seed: int = 0, size: int = 56) -> list[tuple[str, bytes, int]]:
    """[(key, JPEG bytes, label)]: random crops of three photographs, one class per photograph."""
    import skimage.data

    rng = np.random.default_rng(seed)
    imgs = [Image.fromarray(getattr(skimage.data, p)()).convert("RGB") for p in PHOTOS]
    out = []
    for k in range(n):
        lab = k % 3
        img = imgs[lab]
        s = int(rng.integers(100, 220))
        x, y = int(rng.integers(0, img.width - s)), int(rng.integers(0, img.height - s))
        buf = io.BytesIO()
        img.crop((x, y, x + s, y + s)).resize((size, size)).save(buf, format="JPEG", quality=90)
        out.append((f"{CLASSES[lab]}_{k:04d}", buf.getvalue(), lab))
    return out


def write_folder(root: Path, items) -> Path:
    for key, blob, lab in items:
        (root / CLASSES[lab]).mkdir(parents=True, exist_ok=True)
        (root / CLASSES[lab] / f"{key}.JPEG").write_bytes(blob)
    return root


def tar_member(tf, name, data: bytes):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime = len(data), 0
    tf.addfile(ti, io.BytesIO(data))


def write_tars(root: Path, items, per_shard: int = 10, prefix: str = "train") -> list[Path]:
    """WebDataset shards ``prefix-0000.tar`` ...: KEY.jpg + KEY.cls + KEY.json (timm/imagenet-1k-wds)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(items), per_shard):
        p = root / f"{prefix}-{s // per_shard:04d}.tar"
        with tarfile.open(p, "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, blob, lab in items[s:s + per_shard]:
                tar_member(tf, f"{key}.jpg", blob)
                tar_member(tf, f"{key}.cls", str(lab).encode())
                tar_member(tf, f"{key}.json", json.dumps({"label": lab, "filename": f"{key}.JPEG"}).encode())
        paths.append(p)
    return paths


def _table(items, with_label=True):
    import pyarrow as pa

    st = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {"image": pa.array([{"bytes": b, "path": f"{k}.JPEG"} for k, b, _ in items], type=st)}
    if with_label:
        cols["label"] = pa.array([lab for *_, lab in items], pa.int64())
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"names": CLASSES, "_type": "ClassLabel"}}}}
    return pa.table(cols).replace_schema_metadata({"huggingface": json.dumps(meta)})


def write_parquet(root: Path, items, n_files: int = 2, split: str = "train", row_group: int = 4,
                  with_label: bool = True) -> list[Path]:
    """``root/SPLIT-0000k-of-0000n.parquet`` (ILSVRC/imagenet-1k), several row groups per file."""
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    per = (len(items) + n_files - 1) // n_files
    paths = []
    for f in range(n_files):
        p = root / f"{split}-{f:05d}-of-{n_files:05d}.parquet"
        pq.write_table(_table(items[f * per:(f + 1) * per], with_label), p, row_group_size=row_group)
        paths.append(p)
    return paths


def write_saved(root: Path, items, batch: int = 5) -> Path:
    """The layout ``datasets.Dataset.save_to_disk`` writes: arrow stream files, state.json, dataset_info.json."""
    import pyarrow as pa

    root.mkdir(parents=True, exist_ok=True)
    t = _table(items)
    with pa.OSFile(str(root / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        for b in t.to_batches(max_chunksize=batch):
            w.write_batch(b)
    (root / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                 "_fingerprint": "x", "_split": "train"}))
    (root / "dataset_info.json").write_text(json.dumps(
        {"features": {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}}))
    return root


def write_hf_cache(hub: Path, org: str, name: str, items, commit: str = "0" * 40) -> Path:
    """A dataset repo as huggingface_hub caches it: snapshots/<commit>/data/*.parquet symlinked to blobs/."""
    repo = hub / f"datasets--{org}--{name}"
    tmp = repo / "tmp"
    files = write_parquet(tmp, items, split="train") + write_parquet(tmp, items[:6], n_files=1, split="validation")
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / commit / "data"
    snap.mkdir(parents=True)
    for k, f in enumerate(files):
        blob = repo / "blobs" / f"blob{k}"
        f.rename(blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    tmp.rmdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo


def tree_state(root: Path) -> dict:
    """{relative path: (size, mtime_ns)} of everything under root (to show nothing was written there)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}
