"""Per-item source fingerprints: an image changed after extraction, or between an interrupted run and its
resume, is re-extracted (with its shard); a cache never mixes old and new contents."""

import io
import json
import os

import numpy as np
import pytest
from _source_helpers import jpegs, write_folder, write_tars
from PIL import Image

import svgfeat
from svgfeat.cache.manifest import MANIFEST

KW = dict(model="test_tiny", size=32, shard_size=6, batch_size=3, progress=False)


@pytest.fixture(autouse=True)
def _index_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SVGFEAT_INDEX_DIR", str(tmp_path / "index"))


def other_jpeg(seed: int, size: int = 56) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def shard_files(out):
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.safetensors"))}


def assert_same_cache(a, b):
    assert a.paths == b.paths and (a.labels == b.labels).all()
    for g in a.groups:
        assert np.array_equal(a.read(g), b.read(g)), g


def test_image_changed_after_extraction_is_re_extracted(tmp_path, capsys):
    d = write_folder(tmp_path / "imgs", jpegs(18))
    out = tmp_path / "out"
    c = svgfeat.extract(d, out, **KW)
    old_cls = c.read("cls")
    before = shard_files(out)
    target = d / c.paths[8]  # item 8: shard 1
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns))
    target.write_bytes(other_jpeg(1))
    again = svgfeat.extract(d, out, progress=True, **{k: v for k, v in KW.items() if k != "progress"})
    assert "1 item(s) changed since they were extracted" in capsys.readouterr().out
    after = shard_files(out)
    assert after["shard-00000.safetensors"] == before["shard-00000.safetensors"]  # untouched shards kept
    assert after["shard-00002.safetensors"] == before["shard-00002.safetensors"]
    assert after["shard-00001.safetensors"] != before["shard-00001.safetensors"]
    assert not np.array_equal(again.read("cls", 8), old_cls[8])
    assert_same_cache(again, svgfeat.extract(d, tmp_path / "fresh", **KW))
    # nothing changed now: reused as is
    assert shard_files(out) == shard_files(svgfeat.extract(d, out, **KW).root)


def test_images_changed_between_interrupted_run_and_resume_never_mix(tmp_path):
    d = write_folder(tmp_path / "imgs", jpegs(18))
    out = tmp_path / "out"
    c = svgfeat.extract(d, out, **KW)
    names = list(c.paths)
    # an interrupted run: shard 2 never written, manifest not complete
    m = json.loads((out / MANIFEST).read_text())
    m.update(complete=False)
    m.pop("shards", None), m.pop("failures", None), m.pop("num_rows", None)
    (out / MANIFEST).write_text(json.dumps(m))
    (out / "shard-00002.safetensors").unlink()
    (out / "shard-00002.json").unlink()
    for k in (0, 7):  # items already extracted (shards 0 and 1) change before the resume
        (d / names[k]).write_bytes(other_jpeg(10 + k))
    resumed = svgfeat.extract(d, out, **KW)
    assert_same_cache(resumed, svgfeat.extract(d, tmp_path / "fresh", **KW))


def test_content_hash_sees_same_size_same_mtime_edits_and_ignores_touches(tmp_path):
    d = write_folder(tmp_path / "imgs", jpegs(12))
    out = tmp_path / "out"
    c = svgfeat.extract(d, out, hash_sources=True, **KW)
    before = shard_files(out)
    f = d / c.paths[2]
    st = f.stat()
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0x55  # same size; mtime restored below: only a content hash can see it
    f.write_bytes(bytes(blob))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    g = d / c.paths[9]
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, content unchanged
    svgfeat.extract(d, out, hash_sources=True, **KW)
    after = shard_files(out)
    assert after["shard-00000.safetensors"] != before["shard-00000.safetensors"]
    assert after["shard-00001.safetensors"] == before["shard-00001.safetensors"]
    idx = json.loads((out / "shard-00000.json").read_text())
    assert len(idx["sources"]) == 6 and all(len(s) == 3 for s in idx["sources"])


def test_a_rewritten_tar_shard_re_extracts_its_items(tmp_path):
    items = jpegs(12)
    d = tmp_path / "tars"
    write_tars(d, items, per_shard=6)
    out = tmp_path / "out"
    svgfeat.extract(d, out, **KW)
    before = shard_files(out)
    changed = list(items)
    changed[8] = (items[8][0], other_jpeg(3), items[8][2])  # same keys and labels, new bytes in shard 1
    new = write_tars(tmp_path / "new", changed[6:], per_shard=6)[0]  # only the second shard is rewritten
    os.replace(new, d / "train-0001.tar")
    c = svgfeat.extract(d, out, **KW)
    after = shard_files(out)
    assert after["shard-00000.safetensors"] == before["shard-00000.safetensors"]
    assert after["shard-00001.safetensors"] != before["shard-00001.safetensors"]
    assert_same_cache(c, svgfeat.extract(d, tmp_path / "fresh", **KW))


def test_a_shard_without_recorded_fingerprints_is_not_trusted(tmp_path):
    d = write_folder(tmp_path / "imgs", jpegs(12))
    out = tmp_path / "out"
    svgfeat.extract(d, out, **KW)
    before = shard_files(out)
    p = out / "shard-00001.json"
    idx = json.loads(p.read_text())
    del idx["sources"]
    p.write_text(json.dumps(idx))
    svgfeat.extract(d, out, **KW)
    after = shard_files(out)
    assert after["shard-00001.safetensors"] != before["shard-00001.safetensors"]
    assert after["shard-00000.safetensors"] == before["shard-00000.safetensors"]
