"""Issue I: damaged, hostile and concurrent caches are detected, refused or contained, with readable errors.

Every case corrupts a copy of one small real extraction (test_tiny, 3 shards of 16 rows).
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

import svgfeat
from svgfeat.errors import CacheError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "base"
    svgfeat.extract("sample:digits/train", out, model="test_tiny", size=64, limit=40, shard_size=16,
                    batch_size=16, groups=["cls", "latent"], progress=False)
    return out


@pytest.fixture
def copy(base, tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(base, dst)
    return dst


def verify(path, deep=True):
    from svgfeat.cache.verify import verify_cache

    return verify_cache(path, deep=deep)


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def set_manifest(path, m):
    (path / "manifest.json").write_text(json.dumps(m))


def set_index(path, name, idx):
    """Rewrite a shard index AND its recorded hash (a consistent edit: the deeper checks must catch it)."""
    from svgfeat.cache.fasthash import of_bytes

    (path / name).write_text(json.dumps(idx))
    m = manifest(path)
    entry = next(e for e in m["shards"] if e["index"] == name)
    entry["index_xxh3"] = of_bytes((path / name).read_bytes())
    set_manifest(path, m)


def tensor_span(shard, group):
    """(absolute byte offset, dtype, shape) of ``group`` in a safetensors file, parsed by hand."""
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    t = json.loads(raw[8:8 + n])[group]
    return 8 + n + t["data_offsets"][0], t["dtype"], t["shape"]


def run_cli(*args, timeout=60):
    """The real `svgfeat` command in a subprocess (end to end, with a hang guard)."""
    return subprocess.run([sys.executable, "-m", "svgfeat", *args], capture_output=True, text=True, timeout=timeout)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """The same CLI entry point in-process (no interpreter start per call); SIGALRM guards against a hang."""
    from svgfeat.cli import main

    def timeout(*_):
        raise TimeoutError("svgfeat CLI call hung")

    def run(*args, timeout_s=30):
        capsys.readouterr()
        old = signal.signal(signal.SIGALRM, timeout)
        signal.alarm(timeout_s)
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        out = capsys.readouterr()
        return _Result(code, out.out, out.err)
    return run


# ---------------------------------------------------------------- intact
def test_intact_cache_verifies_clean(base, cli):
    assert verify(base) == []
    r = cli("cache", "verify", str(base))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


# ---------------------------------------------------------------- damaged data
def test_flipped_byte_in_data_is_found_by_verify(copy, cli):
    f = copy / "shard-00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # low mantissa bit: still a finite number, only the checksum can tell
    f.write_bytes(bytes(data))
    probs = verify(copy)
    assert any("shard-00001.safetensors" in p and "checksum" in p for p in probs), probs
    r = cli("cache", "verify", str(copy))
    assert r.returncode == 1 and "shard-00001" in r.stderr


def test_flipped_byte_in_header_is_refused_on_open(copy):
    f = copy / "shard-00000.safetensors"
    data = bytearray(f.read_bytes())
    i = data.index(b'"shape":[16,') + len(b'"shape":[1')
    data[i] = ord("7")  # 16 rows -> 17 rows: offsets no longer match
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard-00000"):
        svgfeat.open_cache(copy)
    assert any("shard-00000" in p for p in verify(copy))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_value_is_reported_with_its_row(copy, value):
    f = copy / "shard-00001.safetensors"
    off, dt, shape = tensor_span(f, "cls")
    assert dt == "F16"
    row, col = 5, 3
    data = bytearray(f.read_bytes())
    pos = off + (row * shape[1] + col) * 2
    data[pos:pos + 2] = np.array([value], dtype=np.float16).tobytes()
    f.write_bytes(bytes(data))
    probs = verify(copy)
    assert any("shard-00001.safetensors" in p and "'cls'" in p and "row 5" in p and "cache row 21" in p
               for p in probs), probs
    # the hashes in the manifest were computed before the damage: the first read refuses the changed bytes
    with pytest.raises(CacheError, match=r"shard-00001.safetensors: group 'cls' data .*checksum mismatch"):
        svgfeat.open_cache(copy).read("cls")
    # an encoder that emitted the value itself records matching hashes: the row check names the row
    from svgfeat.cache.fasthash import of_bytes

    idx = json.loads((copy / "shard-00001.json").read_text())
    idx["xxh3"]["groups"]["cls"] = of_bytes(bytes(data[off:off + shape[0] * shape[1] * 2]))  # one block
    set_index(copy, "shard-00001.json", idx)
    c = svgfeat.open_cache(copy)  # cheap open: header and size are fine
    with pytest.raises(CacheError, match=r"group 'cls' row 21 .*shard-00001.safetensors row 5.*non-finite"):
        c.read("cls")
    with pytest.raises(CacheError, match="row 21"):
        list(c.iter_batches(["cls"], batch_size=8))
    with pytest.raises(CacheError, match="row 21"):
        c.read("cls", [3, 21])
    assert np.isfinite(c.read("cls", [0, 20, 22, 39])).all()  # other rows stay readable
    assert np.isfinite(c.read("latent")).all()


def test_truncated_shard(copy):
    f = copy / "shard-00002.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CacheError, match="shard-00002"):
        svgfeat.open_cache(copy)
    probs = verify(copy, deep=False)
    assert any("shard-00002" in p and ("truncated" in p or "bytes" in p) for p in probs), probs


def test_deleted_shard(copy):
    (copy / "shard-00001.safetensors").unlink()
    with pytest.raises(CacheError, match="shard-00001.safetensors is missing"):
        svgfeat.open_cache(copy)
    assert any("shard-00001.safetensors is missing" in p for p in verify(copy))


def test_deleted_shard_index(copy):
    (copy / "shard-00001.json").unlink()
    with pytest.raises(CacheError, match="shard-00001.json is missing"):
        svgfeat.open_cache(copy)
    assert any("shard-00001.json is missing" in p for p in verify(copy))


def test_wrong_row_counts(copy):
    m = manifest(copy)
    m["shards"][0]["rows"] = 15
    m["num_rows"] -= 1
    set_manifest(copy, m)
    probs = verify(copy)
    assert any("shard-00000.safetensors" in p and "15" in p for p in probs), probs
    assert any("shard-00000.json" in p and "15" in p for p in probs), probs
    with pytest.raises(CacheError, match="15"):
        svgfeat.open_cache(copy)


def test_index_with_wrong_row_count(copy):
    idx = json.loads((copy / "shard-00002.json").read_text())
    idx["paths"] = idx["paths"][:-1]
    (copy / "shard-00002.json").write_text(json.dumps(idx))
    probs = verify(copy)
    assert any("shard-00002.json" in p and "paths" in p for p in probs), probs
    with pytest.raises(CacheError, match="shard-00002.json"):
        svgfeat.open_cache(copy)


def test_num_rows_disagrees_with_shards(copy):
    m = manifest(copy)
    m["num_rows"] = 41
    set_manifest(copy, m)
    assert any("num_rows" in p for p in verify(copy))
    with pytest.raises(CacheError, match="num_rows"):
        svgfeat.open_cache(copy)


def test_shards_of_another_size_are_caught(copy, tmp_path):
    """Two runs with different --size into one folder: shards hold size-80 latents, the manifest says 64."""
    other = svgfeat.extract("sample:digits/train", tmp_path / "s80", model="test_tiny", size=80, limit=40,
                            shard_size=16, batch_size=16, groups=["cls", "latent"], progress=False)
    for name in ("shard-00001.safetensors", "shard-00001.json"):
        shutil.copy(other.root / name, copy / name)
    m = manifest(copy)
    m["shards"][1].update({k: json.loads((copy / "shard-00001.json").read_text())[k] for k in ("sha256", "size")})
    set_manifest(copy, m)  # even with matching checksums, the header disagrees with the manifest
    set_index(copy, "shard-00001.json", json.loads((copy / "shard-00001.json").read_text()))
    probs = verify(copy)
    assert any("shard-00001" in p and "'latent'" in p and "(72, 5, 5)" in p for p in probs), probs
    with pytest.raises(CacheError, match="row shape"):
        svgfeat.open_cache(copy)


# ---------------------------------------------------------------- malformed manifests
@pytest.mark.parametrize("edit,expect", [
    (lambda m: m.pop("shards"), "'shards' is missing"),
    (lambda m: m.pop("groups"), "'groups' is missing"),
    (lambda m: m.pop("encoder"), "'encoder' is missing"),
    (lambda m: m.pop("dataset"), "'dataset' is missing"),
    (lambda m: m["shards"][0].pop("file"), r"shards\[0\].file is missing"),
    (lambda m: m["shards"][1].pop("sha256"), r"shards\[1\].sha256 is missing"),
    (lambda m: m["shards"][1].update(rows="16"), r"shards\[1\].rows"),
    (lambda m: m.update(shards={"a": 1}), "expected a list"),
    (lambda m: m["groups"].update(cls=[64]), "groups.cls"),
])
def test_malformed_manifest_says_what_is_wrong(copy, edit, expect, cli):
    m = manifest(copy)
    edit(m)
    set_manifest(copy, m)
    with pytest.raises(CacheError, match=expect):
        svgfeat.open_cache(copy)
    probs = verify(copy)
    assert any(__import__("re").search(expect, p) for p in probs), probs
    r = cli("cache", "verify", str(copy))
    assert r.returncode == 1 and "FAIL" in r.stderr


@pytest.mark.parametrize("text", ["[1, 2, 3]", "\"cache\"", "{\"format\": \"svgfeat-cache\"", "null"])
def test_manifest_that_is_not_an_object(copy, text, cli):
    (copy / "manifest.json").write_text(text)
    with pytest.raises(CacheError, match="manifest"):
        svgfeat.open_cache(copy)
    assert verify(copy)
    r = cli("cache", "info", str(copy))  # raises nothing but SvgfeatError: one line, exit 2
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and "manifest" in r.stderr


# ---------------------------------------------------------------- paths that leave the cache
@pytest.mark.parametrize("field", ["file", "index"])
@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "/dev/zero", "..", "sub/../../x"])
def test_manifest_paths_stay_inside(copy, field, name, cli):
    m = manifest(copy)
    m["shards"][0][field] = name
    set_manifest(copy, m)
    with pytest.raises(CacheError, match="leaves the cache folder"):
        svgfeat.open_cache(copy)
    r = cli("cache", "verify", str(copy))
    assert r.returncode == 1 and "leaves the cache folder" in r.stderr


def test_symlinks_out_and_special_files_are_never_read(copy):
    (copy / "shard-00000.safetensors").unlink()
    os.symlink("/dev/zero", copy / "shard-00000.safetensors")
    (copy / "shard-00001.json").unlink()
    os.symlink("/etc/passwd", copy / "shard-00001.json")
    (copy / "shard-00002.safetensors").unlink()
    os.mkfifo(copy / "shard-00002.safetensors")
    with pytest.raises(CacheError, match="outside the cache folder"):
        svgfeat.open_cache(copy)
    r = run_cli("cache", "verify", str(copy), timeout=60)  # must return, not block on the FIFO or /dev/zero
    assert r.returncode == 1
    assert "shard-00000.safetensors' in" in r.stderr and "resolves outside" in r.stderr
    assert "shard-00001.json' in" in r.stderr
    assert "shard-00002.safetensors is a FIFO, not a regular file" in r.stderr


def test_manifest_symlinked_to_a_device_or_fifo(copy, cli):
    (copy / "manifest.json").unlink()
    os.symlink("/dev/zero", copy / "manifest.json")
    with pytest.raises(CacheError, match="outside the cache folder"):
        svgfeat.open_cache(copy)
    (copy / "manifest.json").unlink()
    os.mkfifo(copy / "manifest.json")
    r = cli("cache", "verify", str(copy))
    assert r.returncode != 0 and "not a regular file" in (r.stderr + r.stdout)


def test_verify_on_dev_returns(cli):
    r = cli("cache", "verify", "/dev/zero")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    with pytest.raises(CacheError):
        verify("/dev/zero")


def test_stats_json_symlink_out_is_refused(copy):
    os.symlink("/etc/passwd", copy / "stats.json")
    with pytest.raises(CacheError, match="outside the cache folder"):
        svgfeat.open_cache(copy).latent_stats()


# ---------------------------------------------------------------- old caches
def test_v1_cache_with_empty_shard_still_opens(copy):
    """The landed main wrote an all-failed shard as tensors of shape [0]; such caches must still open."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    f = copy / "shard-00002.safetensors"
    save_file({"cls": torch.zeros(0), "latent": torch.zeros(0)}, str(f), metadata={"svgfeat": "{}"})
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    idx = json.loads((copy / "shard-00002.json").read_text())
    idx.update(rows=0, paths=[], labels=[], items=[], views=[], sha256=digest, size=f.stat().st_size,
               failures=[[p, "broken"] for p in idx["paths"]])
    idx.pop("xxh3")  # that main recorded no fast hashes (checked with sha256 on first read instead)
    (copy / "shard-00002.json").write_text(json.dumps(idx))
    m = manifest(copy)
    m["shards"][2].update(rows=0, sha256=digest, size=f.stat().st_size)
    m["shards"][2].pop("index_xxh3")
    m["num_rows"] = 32
    m["failures"] = idx["failures"]
    set_manifest(copy, m)
    c = svgfeat.open_cache(copy)
    assert len(c) == 32 and c.read("cls").shape == (32, 64)
    assert verify(copy) == []


# ---------------------------------------------------------------- one writer, owned files, umask, write errors
_HOLD = """
import sys, time
from svgfeat.cache.lock import cache_lock
with cache_lock(sys.argv[1], {"cmd": "extract", "size": 64}):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_writer_is_refused_and_a_crash_releases_the_lock(tmp_path):
    from svgfeat.cache.lock import cache_lock

    out = tmp_path / "c"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match=rf"{out} is being written by pid {p.pid} .*size=64"):
            with cache_lock(out, {"cmd": "extract", "size": 80}):
                pass
        with pytest.raises(CacheError, match="after waiting 0.3s"):
            with cache_lock(out, wait=0.3):
                pass
        with pytest.raises(CacheError, match="is being written by"):
            svgfeat.from_arrays(out, {"cls": np.zeros((4, 2), np.float32)})
        assert not (out / "manifest.json").exists()
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    with cache_lock(out, wait=5):  # the kernel dropped the dead holder's lock
        pass


def test_lock_in_one_process_excludes_a_second_open(tmp_path):
    from svgfeat.cache.lock import cache_lock, is_locked

    with cache_lock(tmp_path, {"cmd": "a"}):
        assert is_locked(tmp_path)
        with pytest.raises(CacheError, match="cmd=a"):
            with cache_lock(tmp_path):
                pass
    assert not is_locked(tmp_path)


def test_overwrite_removes_only_what_svgfeat_wrote(copy):
    from svgfeat.cache.owned import owned_files, remove_cache

    (copy / "photo.jpg").write_bytes(b"user data")
    (copy / "notes.txt").write_text("keep me")
    (copy / "sub").mkdir()
    (copy / "sub" / "shard-00000.json").write_text("{}")
    outside = copy.parent / "precious.txt"
    outside.write_text("outside")
    os.symlink(outside, copy / "shard-00009.safetensors")  # not named by the manifest: not ours
    (copy / ".shard-00001.safetensors.tmp-123").write_bytes(b"partial")
    (copy / "stats.json").write_text("{}")
    (copy / ".svgfeat.lock").write_text("")  # left by a crashed writer (a finished run deletes it)
    names = sorted(p.name for p in owned_files(copy))
    assert names == sorted([".shard-00001.safetensors.tmp-123", ".svgfeat.lock", "manifest.json", "stats.json",
                            *[f"shard-0000{i}.{e}" for i in range(3) for e in ("json", "safetensors")]])
    remove_cache(copy)
    left = sorted(p.name for p in copy.iterdir())
    assert left == [".svgfeat.lock", "notes.txt", "photo.jpg", "shard-00009.safetensors", "sub"]  # lock: kept
    assert outside.read_text() == "outside" and (copy / "sub" / "shard-00000.json").exists()


def test_a_foreign_manifest_is_not_ours(tmp_path):
    from svgfeat.cache.owned import owned_files

    (tmp_path / "manifest.json").write_text('{"name": "my web app"}')
    (tmp_path / "shard-00000.json").write_text("{}")
    assert owned_files(tmp_path) == []
    with pytest.raises(CacheError, match="not an svgfeat cache"):
        svgfeat.from_arrays(tmp_path, {"cls": np.zeros((4, 2), np.float32)}, overwrite=True)
    assert (tmp_path / "manifest.json").read_text() == '{"name": "my web app"}'


def test_outputs_follow_the_umask(tmp_path):
    """Shards were 0600 while JSON files were 0644: every output now follows the umask (both writers)."""
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o002, 0o664), (0o077, 0o600)):
            os.umask(umask)
            out = tmp_path / oct(umask)
            svgfeat.from_arrays(out / "arr", {"cls": np.ones((5, 3), np.float32)}, shard_size=2)
            svgfeat.extract("sample:digits/val", out / "ext", model="test_tiny", size=32, limit=4, shard_size=2,
                            groups=["cls"], progress=False)
            files = [p for p in out.rglob("*") if p.is_file() and p.name != ".svgfeat.lock"]
            assert {p.suffix for p in files} == {".safetensors", ".json"} and len(files) == 7 + 5
            assert {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files} == {
                str(p.relative_to(out)): oct(mode) for p in files}
    finally:
        os.umask(old)


@pytest.mark.parametrize("err", ["ENOSPC", "EROFS", "EACCES"])
def test_write_errors_are_one_line_and_leave_no_temp_file(tmp_path, monkeypatch, err):
    import errno

    from svgfeat import atomic
    from svgfeat.cache.shards import write_shard

    def fail(fd):
        raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)))

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(CacheError, match=rf"cannot write {tmp_path}/shard-00000.safetensors: "
                                         rf"{os.strerror(getattr(errno, err))}$"):
        write_shard(tmp_path / "shard-00000.safetensors", {"cls": np.ones((2, 2), np.float32)})
    with pytest.raises(CacheError, match="cannot write"):
        svgfeat.from_arrays(tmp_path / "c", {"cls": np.ones((2, 2), np.float32)})
    assert list(tmp_path.glob("*.safetensors")) == []
    assert [p.name for p in tmp_path.rglob("*tmp-*")] == []


def test_unwritable_target_is_a_one_line_error(tmp_path):
    """A real failing write (no injection): the parent of the target is a file."""
    from svgfeat.atomic import write_json_atomic

    (tmp_path / "afile").write_text("x")
    with pytest.raises(CacheError, match=f"cannot write {tmp_path}/afile/x.json: Not a directory$"):
        write_json_atomic(tmp_path / "afile" / "x.json", {})
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd"])
def test_recorded_image_paths_stay_inside_the_dataset_root(copy, bad):
    idx = json.loads((copy / "shard-00000.json").read_text())
    idx["paths"][3] = bad
    set_index(copy, "shard-00000.json", idx)  # a hostile cache with consistent hashes
    m = manifest(copy)
    m["dataset"]["root"] = str(copy.parent / "photos")
    set_manifest(copy, m)
    c = svgfeat.open_cache(copy)
    assert c.abspath(2) == str(copy.parent / "photos" / idx["paths"][2])
    with pytest.raises(CacheError, match="row 3: path .* leaves the dataset folder"):
        c.abspath(3)
