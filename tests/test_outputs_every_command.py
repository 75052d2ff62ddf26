"""Every output option of every command refuses an existing file that svgfeat did not write, before any work,
with one line and exit status 2, and leaves nothing behind; ``--overwrite`` replaces it; a file svgfeat wrote
itself is replaced on a rerun without asking (issue Q, point 5). stats/export/encode/index/train-dit/extract are
covered in test_outputs_safe.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import svgfeat
from svgfeat.atomic import written_by_svgfeat
from svgfeat.errors import ConfigError

USER_BYTES = b"the user's own file\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photos):
    """Two images, a labelled train/val cache pair, a dummy head/index/reference file (never read: the refusal
    comes first), a samples folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("inputs")
    for i in range(2):
        Image.fromarray(photos[i]).save(d / f"img{i}.png")
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("val", 12)):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        svgfeat.from_arrays(d / name, {"cls": x}, labels=np.arange(n) % 3)
    (d / "dummy.bin").write_bytes(b"x")
    return d


def commands(d: Path, o: Path) -> dict[str, tuple[list, list[str]]]:
    """name -> (argv, the output files it would write that the test plants, relative to ``o``)."""
    img0, img1, dummy = d / "img0.png", d / "img1.png", d / "dummy.bin"
    tiny = ["--model", "test_tiny"]
    return {
        "probe": (["probe", "--train", d / "train", "--features", "cls", "-o", o / "p.json"], ["p.json"]),
        "knn": (["knn", "--train", d / "train", "--val", d / "val", "--features", "cls", "-o", o / "k.json"],
                ["k.json"]),
        "search --html": (["search", dummy, "x:0", "--html", o / "r.html"], ["r.html"]),
        "interpolate": (["interpolate", img0, img1, "-o", o / "s.png", *tiny], ["s.png"]),
        "reconstruct": (["reconstruct", img0, img1, "-o", o, *tiny], ["img1_recon.png"]),
        "pca": (["pca", img0, img1, "-o", o, *tiny], ["img0_pca.png"]),
        "generate": (["generate", "--dit", dummy, "--stats", dummy, "--classes", "3,5", "--n", "2", "-o", o],
                     ["class0005_001.png", "grid.png"]),
        "fid --save-stats": (["fid", d, dummy, "--save-stats", o / "mine"], ["mine.npz"]),
        "eval-recon --sheet": (["eval-recon", "sample:photos", *tiny, "--sheet", o / "sheet.png"], ["sheet.png"]),
        "eval-recon --json": (["eval-recon", "sample:photos", *tiny, "--sheet", "", "--json", o / "m.json"],
                              ["m.json"]),
        "eval imagenet": (["eval", "imagenet", "--root", "sample", *tiny, "--out", o], ["results.md"]),
        "seg train": (["seg", "train", "--data", "sample:digitseg", *tiny, "--out", o], ["metrics.json"]),
        "seg eval --json": (["seg", "eval", "--data", "sample:digitseg", "--head", dummy, *tiny, "--json",
                             o / "e.json"], ["e.json"]),
        "seg predict": (["seg", "predict", img0, img1, "--head", dummy, *tiny, "-o", o], ["img1_overlay.png"]),
        "depth train": (["depth", "train", "--data", "sample:depth", *tiny, "--out", o], ["head.json"]),
        "depth eval --json": (["depth", "eval", "--data", "sample:depth", "--head", dummy, *tiny, "--json",
                               o / "e.json"], ["e.json"]),
        "depth predict": (["depth", "predict", img0, "--head", dummy, *tiny, "-o", o], ["img0_depth_mm.png"]),
        "train-ae": (["train-ae", "sample:photos", *tiny, "--out", o], ["summary.json"]),
    }


NAMES = list(commands(Path("d"), Path("o")))


@pytest.mark.parametrize("name", NAMES)
def test_an_output_svgfeat_did_not_write_is_refused_before_any_work(name, inputs, tmp_path, capsys):
    from svgfeat.cli import main

    o = tmp_path / "out"
    argv, planted = commands(inputs, o)[name]
    for rel in planted:
        (o / rel).parent.mkdir(parents=True, exist_ok=True)
        (o / rel).write_bytes(USER_BYTES)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert e.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert "not written by svgfeat" in lines[0] and "--overwrite" in lines[0], lines[0]
    assert any(Path(rel).name in lines[0] for rel in planted) or "files in" in lines[0], lines[0]
    assert all((o / rel).read_bytes() == USER_BYTES for rel in planted)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing else left behind


def test_many_refused_files_are_one_line_with_the_count(inputs, tmp_path, capsys):
    from svgfeat.cli import main

    o = tmp_path / "o"
    o.mkdir()
    for i in range(5):
        (o / f"class0001_{i:03d}.png").write_bytes(USER_BYTES)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--dit", str(inputs / "dummy.bin"), "--stats", str(inputs / "dummy.bin"), "--classes", "1",
              "--n", "5", "-o", str(o)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1
    assert "5 output files in" in lines[0] and "class0001_000.png" in lines[0] and "..." in lines[0], lines[0]


def _run(capsys, *argv):
    from svgfeat.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out


def test_overwrite_replaces_and_a_rerun_replaces_our_own_file(inputs, tmp_path, capsys, one_thread):
    out = tmp_path / "k.json"
    out.write_bytes(USER_BYTES)
    args = ["knn", "--train", inputs / "train", "--val", inputs / "val", "--features", "cls", "-k", "1,3"]
    _run(capsys, *args, "-o", out, "--overwrite")
    first = json.loads(out.read_text())
    assert set(first["k"]) == {"1", "3"} and written_by_svgfeat(out)
    _run(capsys, *args[:-1], "5", "-o", out)  # ours now: replaced without --overwrite
    assert set(json.loads(out.read_text())["k"]) == {"5"}


def test_picture_outputs_are_ours_after_a_run_and_rerun_cleanly(inputs, tmp_path, capsys, one_thread):
    o = tmp_path / "pics"
    for _ in range(2):  # the second run replaces what the first wrote, without --overwrite
        _run(capsys, "reconstruct", inputs / "img0.png", inputs / "img1.png", "-o", o, "--model", "test_tiny",
             "--size", "32")
        _run(capsys, "pca", inputs / "img0.png", "-o", o, "--model", "test_tiny", "--size", "32")
    names = sorted(os.listdir(o))
    assert names == ["img0_pca.png", "img0_recon.png", "img1_recon.png"]  # no temp file left
    assert all(written_by_svgfeat(o / n) for n in names)
    from svgfeat.picture_files import image_meta

    for n in names:  # each picture records how it was made (the one numerics object)
        meta = image_meta(o / n)
        assert meta["numerics"]["precision"] == "fp32" and meta["numerics"]["device_type"] == "cpu", meta
    assert image_meta(o / "img0_pca.png")["made_by"] == "svgfeat pca"
    _run(capsys, "pca", inputs / "img0.png", "-o", o, "--model", "test_tiny", "--size", "32", "--precision", "bf16")
    assert image_meta(o / "img0_pca.png")["numerics"]["precision"] == "bf16"


def test_streams_and_devices_are_written_in_place(inputs, capsys, one_thread):
    out = _run(capsys, "knn", "--train", inputs / "train", "--val", inputs / "val", "--features", "cls", "-k", "1",
               "-o", "/dev/stdout")
    assert '"k"' in out.out
    _run(capsys, "knn", "--train", inputs / "train", "--val", inputs / "val", "--features", "cls", "-k", "1",
         "-o", "/dev/null")
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()


def test_a_fifo_output_is_refused_not_blocked_on(inputs, tmp_path, capsys):
    from svgfeat.cli import main

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as e:
        main(["knn", "--train", str(inputs / "train"), "--val", str(inputs / "val"), "--features", "cls",
              "-o", str(fifo)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not a regular file" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("kind", ["seg", "depth"])
def test_write_sample_never_replaces_a_user_file(kind, tmp_path):
    if kind == "seg":
        from svgfeat.data.segmentation import open_seg_dataset as open_ds
        from svgfeat.data.segmentation import write_folder_dataset as write
        spec, mine = "sample:digitseg/val", "masks"
    else:
        from svgfeat.data.depth import open_depth_dataset as open_ds
        from svgfeat.data.depth import write_depth_folder as write
        spec, mine = "sample:depth/val", "depth"
    ds = open_ds(spec).subset(range(3))
    first = write(ds, tmp_path / "a")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and all(written_by_svgfeat(first / f) for f in files)
    write(ds, tmp_path / "a")  # ours: a rerun replaces them
    victim = sorted((first / mine).iterdir())[1]
    victim.unlink()  # the user's own file in its place (one edited in place keeps svgfeat's mark)
    victim.write_bytes(USER_BYTES)
    with pytest.raises(ConfigError, match="not written by svgfeat"):
        write(ds, tmp_path / "a")
    assert victim.read_bytes() == USER_BYTES
    write(ds, tmp_path / "a", overwrite=True)
    assert victim.read_bytes() != USER_BYTES and written_by_svgfeat(victim)
