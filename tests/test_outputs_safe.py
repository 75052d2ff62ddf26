"""Outputs: never replace a file svgfeat did not write, every output whole or absent (a write that fails
part-way leaves nothing), a refused run leaves nothing behind, and outputs follow the umask."""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import svgfeat
from svgfeat.heads.retrieval import FaissIndex


def run(*args, fsize: int | None = None, umask: int | None = None, timeout: float = 300):
    """The CLI in a subprocess; ``fsize``: no file may grow beyond that many bytes (a write past it fails
    with EFBIG, as on a full disk); ``umask``: the child's umask."""
    def limits():
        if umask is not None:
            os.umask(umask)
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "svgfeat", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limits, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """The CLI in this process (cheap): ``cli(*args, umask=None)`` -> Result."""
    from svgfeat.cli import main

    def call(*args, umask=None):
        old = os.umask(umask) if umask is not None else None
        try:
            with pytest.raises(SystemExit) as e:
                main([str(a) for a in args])
        finally:
            if old is not None:
                os.umask(old)
        out = capsys.readouterr()
        return Result(e.value.code, out.out, out.err)
    return call


def one_line(r) -> str:
    """The one error line of a failed run (progress bars on stderr aside)."""
    errors = [ln[ln.index("Error: "):] for ln in r.stderr.replace("\r", "\n").splitlines() if "Error: " in ln]
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if ".tmp" in p.name or p.name == ".svgfeat.lock")


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("lat") / "c"
    z = np.random.default_rng(0).standard_normal((12, 6, 2, 2)).astype(np.float32)
    svgfeat.from_arrays(root, {"latent": z}, labels=np.arange(12) % 3, shard_size=5)
    return root


# ------------------------------------------------------------------------------ stats --write-official
def test_stats_official_was_renamed_to_say_it_writes(latent_cache, tmp_path, cli):
    theirs = tmp_path / "dinov3_sp_stats.pt"
    theirs.write_bytes(b"the statistics I wanted to compare against")
    line = one_line(cli("stats", latent_cache, "--official", theirs))
    assert "--write-official" in line
    assert theirs.read_bytes() == b"the statistics I wanted to compare against"


def test_write_official_refuses_a_file_svgfeat_did_not_write(latent_cache, tmp_path, cli):
    theirs = tmp_path / "dinov3_sp_stats.pt"
    torch.save({"dinov3_sp_mean": torch.zeros(1, 1, 6), "dinov3_sp_std": torch.ones(1, 1, 6)}, theirs)  # official
    before = theirs.read_bytes()
    line = one_line(cli("stats", latent_cache, "--write-official", theirs))
    assert "not written by svgfeat" in line and "--overwrite" in line and str(theirs) in line
    assert theirs.read_bytes() == before
    r = cli("stats", latent_cache, "--write-official", theirs, "--overwrite")
    assert r.returncode == 0, r.stderr
    lat = svgfeat.open_cache(latent_cache).read("latent").astype(np.float64)
    st = torch.load(theirs, weights_only=True)
    assert np.allclose(st["dinov3_sp_mean"].reshape(-1).numpy(), lat.mean(axis=(0, 2, 3)), atol=1e-5)
    r = cli("stats", latent_cache, "--write-official", theirs)  # ours now: a rerun needs no --overwrite
    assert r.returncode == 0, r.stderr


def test_write_official_never_replaces_a_folder_or_fifo(latent_cache, tmp_path, cli):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "f")
    for target in (tmp_path / "d", tmp_path / "f"):
        line = one_line(cli("stats", latent_cache, "--write-official", target, "--overwrite"))
        assert "not a regular file" in line or "is a directory" in line
    assert (tmp_path / "d").is_dir() and not (tmp_path / "f").is_file()


# ------------------------------------------------------------------------------ full disk
def test_full_disk_leaves_no_partial_official_stats(latent_cache, tmp_path):
    out = tmp_path / "o" / "stats.pt"
    out.parent.mkdir()
    line = one_line(run("stats", latent_cache, "--write-official", out, fsize=800))
    assert str(out) in line and "File too large" in line
    assert sorted(os.listdir(out.parent)) == []


def test_full_disk_leaves_no_partial_export(tmp_path):
    for fmt, name in (("official", "e.ckpt"), ("svgfeat", "e.safetensors")):
        folder = tmp_path / fmt
        folder.mkdir()
        line = one_line(run("export", "--model", "test_tiny", "-o", folder / name, "--format", fmt, fsize=4096))
        assert name in line and "File too large" in line
        assert sorted(os.listdir(folder)) == []


def test_full_disk_leaves_no_partial_train_dit_files(latent_cache, tmp_path):
    run_dir = tmp_path / "run"
    args = ("train-dit", latent_cache, "--model", "test_dit_tiny", "-o", run_dir, "--steps", "2", "--batch-size",
            "4", "--num-classes", "3", "--log-every", "1", "--ckpt-every", "1")
    line = one_line(run(*args, fsize=20_000))
    assert "File too large" in line
    assert leftovers(run_dir) == []
    for p in run_dir.rglob("*.safetensors"):  # whatever exists is whole
        svgfeat.checkpoints.load_file(p)
    r = run(*args)  # the disk has room again: the same command finishes
    assert r.returncode == 0, r.stderr
    assert (run_dir / "ema.safetensors").is_file() and leftovers(run_dir) == []


def test_train_dit_refuses_a_run_folder_file_it_did_not_write(latent_cache, tmp_path, cli):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ema.safetensors").write_bytes(b"my own weights")
    line = one_line(cli("train-dit", latent_cache, "--model", "test_dit_tiny", "-o", run_dir, "--steps", "1",
                        "--batch-size", "2", "--num-classes", "3"))
    assert "ema.safetensors" in line and "--overwrite" in line
    assert sorted(os.listdir(run_dir)) == ["ema.safetensors"]
    assert (run_dir / "ema.safetensors").read_bytes() == b"my own weights"


# ------------------------------------------------------------------------------ encode / export
def test_encode_and_export_refuse_files_svgfeat_did_not_write(tmp_path, photos, cli):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(photos[0]).save(img)
    mine = tmp_path / "f.safetensors"
    mine.write_bytes(b"not yours")
    line = one_line(cli("encode", img, "-o", mine, "--model", "test_tiny", "--size", "32"))
    assert "not written by svgfeat" in line and mine.read_bytes() == b"not yours"
    yml = tmp_path / "e.yaml"
    yml.write_text("my: config\n")
    line = one_line(cli("export", "--model", "test_tiny", "-o", tmp_path / "e.ckpt"))
    assert "e.yaml" in line and yml.read_text() == "my: config\n" and not (tmp_path / "e.ckpt").exists()
    r = cli("export", "--model", "test_tiny", "-o", tmp_path / "e.ckpt", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "model" in yml.read_text()


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_encode_and_export_follow_the_umask(tmp_path, photos, umask, cli):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(photos[0]).save(img)
    r = cli("encode", img, "-o", tmp_path / "f.safetensors", "--model", "test_tiny", "--size", "32", umask=umask)
    assert r.returncode == 0, r.stderr
    for fmt, name in (("official", "e.ckpt"), ("svgfeat", "s.safetensors")):
        r = cli("export", "--model", "test_tiny", "-o", tmp_path / name, "--format", fmt, umask=umask)
        assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in tmp_path.iterdir() if p.name != "a.png")
    assert files == ["e.ckpt", "e.yaml", "f.safetensors", "s.json", "s.safetensors"]
    assert {n: oct((tmp_path / n).stat().st_mode & 0o777) for n in files} == {n: oct(0o666 & ~umask) for n in files}


# ------------------------------------------------------------------------------ extract
def test_extract_never_replaces_a_user_file_named_like_a_shard(tmp_path, cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "shard-00000.safetensors").write_bytes(b"my file")
    for extra in ((), ("--overwrite",)):
        line = one_line(cli("extract", "sample:digits/val", "-o", out, "--model", "test_tiny", "--size", "32",
                            "--limit", "4", "--groups", "cls", *extra))
        assert "shard-00000.safetensors" in line and "no svgfeat manifest" in line
        assert sorted(os.listdir(out)) == ["shard-00000.safetensors"]
        assert (out / "shard-00000.safetensors").read_bytes() == b"my file"


def test_a_refused_run_leaves_nothing_behind(tmp_path, cli):
    out = tmp_path / "new" / "cache"
    line = one_line(cli("extract", "sample:digits/val", "-o", out, "--model", "test_tiny", "--size", "32",
                        "--limit", "4", "--groups", "nosuchgroup"))
    assert "nosuchgroup" in line and not (tmp_path / "new").exists()
    r = cli("extract", "sample:digits/val", "-o", out, "--model", "test_tiny", "--size", "32", "--limit", "4",
            "--groups", "cls")
    assert r.returncode == 0, r.stderr
    before = sorted(os.listdir(out))
    assert ".svgfeat.lock" not in before  # a finished run leaves no lock file either
    line = one_line(cli("extract", "sample:digits/val", "-o", out, "--model", "test_tiny", "--size", "48",
                        "--limit", "4", "--groups", "cls"))  # refused: another transform
    assert sorted(os.listdir(out)) == before


def test_the_lock_is_still_exclusive_when_its_file_is_deleted_on_release(tmp_path):
    """A writer that waited on a lock file its holder deleted must not run beside the next writer."""
    import threading

    from svgfeat.cache.lock import cache_lock, is_locked
    from svgfeat.errors import CacheError

    got, inside = [], threading.Event()
    with cache_lock(tmp_path, {"cmd": "first"}):
        def waiter():
            with cache_lock(tmp_path, {"cmd": "second"}, wait=30, poll=0.01):
                got.append("second")
                inside.set()
                while len(got) < 2:
                    threading.Event().wait(0.01)

        t = threading.Thread(target=waiter)
        t.start()
        threading.Event().wait(0.2)
    assert inside.wait(30)
    with pytest.raises(CacheError, match="being written"):
        with cache_lock(tmp_path, {"cmd": "third"}):
            pass
    got.append("done")
    t.join(30)
    assert not is_locked(tmp_path) and os.listdir(tmp_path) == []


def test_index_build_never_replaces_a_file_svgfeat_did_not_write(tmp_path, cli):
    """`index build -o` onto a user's file (or its .json / .keys.npy) is refused; --overwrite replaces it; a rebuild
    onto svgfeat's own index needs no flag."""
    rng = np.random.default_rng(0)
    c = svgfeat.from_arrays(tmp_path / "c", {"pooled": rng.standard_normal((64, 8)).astype(np.float32)})
    for suffix in ("", ".json", ".keys.npy"):
        out = tmp_path / f"u{len(suffix)}.index"
        user = Path(f"{out}{suffix}")
        user.write_bytes(b"a user's file")
        r = cli("index", "build", c.root, "-o", out)
        assert r.returncode == 2 and "was not written by svgfeat" in one_line(r) and str(user) in r.stderr
        assert user.read_bytes() == b"a user's file"
        assert sorted(p.name for p in tmp_path.glob(f"{out.name}*")) == [user.name]  # nothing else written
    out = tmp_path / "u0.index"
    assert cli("index", "build", c.root, "-o", out, "--overwrite").returncode == 0
    assert out.read_bytes() != b"a user's file" and FaissIndex.load(out).ntotal_ == 64
    assert cli("index", "build", c.root, "-o", out).returncode == 0  # ours now: rebuilt without --overwrite
