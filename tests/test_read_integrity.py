"""Cheap integrity on every read: damage only a hash can see stops the FIRST head that reads it (not only
`svgfeat cache verify`); verify checks header shapes and (also --quick) NaN/Inf; every reader refuses
non-finite rows naming the row; a manifest listing absurd counts is refused at once.

Every case damages a copy of one small real extraction (test_tiny, 3 shards of 16 rows)."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import svgfeat
from svgfeat.cache import verify_cache
from svgfeat.cli import main
from svgfeat.errors import CacheError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("read_integrity") / "base"
    svgfeat.extract("sample:digits/train", out, model="test_tiny", size=64, limit=48, shard_size=16,
                    batch_size=16, groups=["cls", "pooled", "latent"], progress=False)
    return out


@pytest.fixture
def copy(base, tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(base, dst)
    return dst


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def header(f):
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n])


def span(f, group):
    n, h = header(f)
    return 8 + n + h[group]["data_offsets"][0], 8 + n + h[group]["data_offsets"][1]


def reseal(path, s):
    """Recompute every recorded hash of shard ``s`` (sha256, fast hashes, index hash): what an encoder that
    wrote these bytes itself would have recorded, so only the deeper checks can object."""
    from svgfeat.cache.fasthash import BlockHasher, of_bytes

    f = path / f"shard-{s:05d}.safetensors"
    raw = f.read_bytes()
    n, h = header(f)
    idx = json.loads((path / f"shard-{s:05d}.json").read_text())
    groups = {}
    for g, t in h.items():
        if g != "__metadata__":
            bh = BlockHasher(idx["xxh3"]["block"])
            bh.update(raw[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]])
            groups[g] = bh.hexdigests()
    idx["xxh3"].update(header=of_bytes(raw[:8 + n]), groups=groups)
    idx.update(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))
    (path / f"shard-{s:05d}.json").write_text(json.dumps(idx))
    m = manifest(path)
    m["shards"][s].update(sha256=idx["sha256"], size=len(raw),
                          index_xxh3=of_bytes((path / f"shard-{s:05d}.json").read_bytes()))
    (path / "manifest.json").write_text(json.dumps(m))


def poison(path, s=1, group="cls", row=5, value=np.nan, reseal_it=True):
    f = path / f"shard-{s:05d}.safetensors"
    a, _ = span(f, group)
    data = bytearray(f.read_bytes())
    width = int(np.prod(header(f)[1][group]["shape"][1:]))
    pos = a + (row * width + 3) * 2
    data[pos:pos + 2] = np.array([value], dtype=np.float16).tobytes()
    f.write_bytes(bytes(data))
    if reseal_it:
        reseal(path, s)


def run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def one_line(capsys) -> str:
    """The one error line on stderr (progress bars, which end in their own lines, aside)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "%|" not in ln]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


HEADS = {
    "probe": lambda c, tmp: ["probe", "--train", str(c), "--features", "cls", "--iterations", "3",
                             "--min-iterations", "1", "-o", str(tmp / "p.json")],
    "knn": lambda c, tmp: ["knn", "--train", str(c), "--val", str(c), "-k", "3", "-o", str(tmp / "k.json")],
    "index": lambda c, tmp: ["index", "build", str(c), "--group", "cls", "-o", str(tmp / "i.faiss")],
    "stats": lambda c, tmp: ["stats", str(c), "--groups", "cls"],
}


def flip_data_byte(c):
    f = c / "shard-00001.safetensors"
    a, b = span(f, "cls")
    data = bytearray(f.read_bytes())
    data[(a + b) // 2] ^= 0x01  # a low mantissa bit: the value stays finite and plausible
    f.write_bytes(bytes(data))


def swap_shards(c):
    a, b = c / "shard-00000.safetensors", c / "shard-00001.safetensors"
    assert a.stat().st_size == b.stat().st_size
    tmp = c / "swap.tmp"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def edit_label(c):
    idx = json.loads((c / "shard-00000.json").read_text())
    idx["labels"][0] = (idx["labels"][0] + 1) % 10
    (c / "shard-00000.json").write_text(json.dumps(idx, indent=1, sort_keys=True))


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("damage, says", [
    (flip_data_byte, r"shard-00001.safetensors: group 'cls' data .*checksum mismatch"),
    (swap_shards, r"shard-00000.safetensors: header checksum mismatch"),
    (edit_label, r"shard-00000.json: checksum mismatch"),
], ids=["flipped-byte", "swapped-shards", "edited-label"])
def test_damage_stops_the_first_head_that_reads_it(copy, tmp_path, capsys, head, damage, says):
    import re

    assert run(HEADS[head](copy, tmp_path)) == 0  # intact: the head runs
    capsys.readouterr()
    damage(copy)
    assert run(HEADS[head](copy, tmp_path)) == 2
    err = one_line(capsys)
    assert re.search(says, err) and "cache verify" in err, err


def test_flipped_byte_is_refused_through_the_api_and_other_groups_stay_readable(copy):
    flip_data_byte(copy)
    c = svgfeat.open_cache(copy)  # header and index intact: opens
    with pytest.raises(CacheError, match="group 'cls' data .*checksum mismatch"):
        c.read("cls")
    with pytest.raises(CacheError, match="checksum mismatch"):
        svgfeat.open_cache(copy).read("cls", [20])  # a single row of the damaged block: checked too
    assert c.read("pooled").shape == (48, 64) and c.read("cls", [0, 40]).shape == (2, 64)  # other blocks fine
    assert any("checksum mismatch" in p for p in verify_cache(copy))


def test_legacy_cache_without_fast_hashes_is_checked_with_its_sha256_once(copy):
    m = manifest(copy)
    for e in m["shards"]:
        e.pop("index_xxh3")
        idx = json.loads((copy / e["index"]).read_text())
        idx.pop("xxh3")
        (copy / e["index"]).write_text(json.dumps(idx))
    (copy / "manifest.json").write_text(json.dumps(m))
    assert svgfeat.open_cache(copy).read("cls").shape == (48, 64)  # intact legacy cache: reads
    flip_data_byte(copy)
    with pytest.raises(CacheError, match="shard-00001.safetensors: file checksum mismatch"):
        svgfeat.open_cache(copy).read("pooled")  # any group of the shard: the whole file's sha256


def test_header_that_lies_about_shapes_fails_verify(copy):
    """cls [16, 64] rewritten as [16, 8, 8] (same bytes) with every hash recomputed: only the shape check sees it."""
    f = copy / "shard-00001.safetensors"
    raw = f.read_bytes()
    n, h = header(f)
    h["cls"]["shape"] = [16, 8, 8]
    hj = json.dumps(h, separators=(",", ":")).encode()
    hj += b" " * (n - len(hj))
    assert len(hj) == n
    f.write_bytes(raw[:8] + hj + raw[8 + n:])
    reseal(copy, 1)
    for deep in (True, False):
        probs = verify_cache(copy, deep=deep)
        assert any("shard-00001" in p and "'cls'" in p and "(8, 8)" in p for p in probs), probs
    with pytest.raises(CacheError, match="row shape"):
        svgfeat.open_cache(copy)


@pytest.mark.parametrize("quick", [False, True])
def test_verify_reports_nonfinite_rows_also_quick(copy, capsys, quick):
    poison(copy, value=np.inf)
    assert run(["cache", "verify", str(copy)] + (["--quick"] if quick else [])) == 1
    err = capsys.readouterr().err
    assert "shard-00001.safetensors: group 'cls' has non-finite values (NaN/Inf) in row 5 (cache row 21)" in err, err
    assert "checksum" not in err  # the hashes were recorded with the value: only the value check objects


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_reader_refuses_a_nonfinite_row_naming_it(copy, tmp_path, capsys, head):
    poison(copy)
    assert run(HEADS[head](copy, tmp_path)) == 2
    err = one_line(capsys)
    assert "row 21" in err and "shard-00001.safetensors row 5" in err and "non-finite" in err, err


def test_train_dit_refuses_a_nonfinite_latent_row_naming_it(copy, tmp_path, capsys):
    assert run(["stats", str(copy)]) == 0  # statistics of the intact cache, then the damage
    poison(copy, group="latent", row=2)
    code = run(["train-dit", str(copy), "--model", "test_dit_tiny", "-o", str(tmp_path / "dit"), "--steps", "1",
                "--batch-size", "4", "--num-classes", "10"])
    err = one_line(capsys)
    assert code == 2 and "row 18" in err and "non-finite" in err, err


def absurd_shards(c, n=10**6):
    m = manifest(c)
    e = m["shards"][0]
    m["shards"] = [dict(e, file=f"shard-{i:07d}.safetensors", index=f"shard-{i:07d}.json") for i in range(n)]
    m["num_shards"], m["num_rows"] = n, n * e["rows"]
    (c / "manifest.json").write_text(json.dumps(m))


def absurd_rows(c):
    m = manifest(c)
    m["shards"][0]["rows"] = 10**12
    m["num_rows"] = 10**12 + 32
    (c / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit, says", [(absurd_shards, "lists 1000000 shards but the folder holds only"),
                                        (absurd_rows, "lists 1000000000000 rows, more than its")],
                         ids=["1e6-shards", "1e12-rows"])
def test_absurd_counts_are_refused_at_once_by_info_verify_and_probe(copy, tmp_path, edit, says):
    edit(copy)
    for argv, rc in ((["cache", "info", str(copy)], 2), (["cache", "verify", str(copy)], 1),
                     (["probe", "--train", str(copy), "-o", str(tmp_path / "p.json")], 2)):
        r = subprocess.run([sys.executable, "-m", "svgfeat", *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == rc and says in r.stderr, (argv, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
