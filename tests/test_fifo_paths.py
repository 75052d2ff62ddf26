"""A FIFO (or another non-regular file) wherever svgfeat reads a path is refused at once with one line,
never read (an open of a FIFO for reading blocks until a writer comes).

Each in-process check runs with a guard that, after a few seconds, opens the FIFO for writing and closes
it: a reader blocked on it then wakes up with an empty file, so a regression fails the test instead of
hanging it."""

import contextlib
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import svgfeat
from svgfeat.errors import SvgfeatError


@contextlib.contextmanager
def guarded(fifo, after: float = 5.0):
    """Unblock a reader of ``fifo`` after ``after`` s; yields a list that says whether one was blocked."""
    stop, blocked = threading.Event(), []

    def release():
        if stop.wait(after):
            return
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
            except OSError:
                stop.wait(0.05)
                continue
            blocked.append(True)
            os.close(fd)
            return

    t = threading.Thread(target=release, daemon=True)
    t.start()
    try:
        yield blocked
    finally:
        stop.set()
        t.join(10)


def refused(fifo, call):
    with guarded(fifo) as blocked:
        with pytest.raises(SvgfeatError) as e:
            call()
    assert not blocked, "svgfeat opened the FIFO and blocked on it"
    assert "not a regular file" in str(e.value) and "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.fixture
def fifo(tmp_path):
    def make(name):
        p = tmp_path / name
        os.mkfifo(p)
        return p
    return make


def test_yaml_and_weight_files(fifo):
    from svgfeat import checkpoints as ck

    y = fifo("ae.yaml")
    refused(y, lambda: ck.load_yaml(y))
    refused(y, lambda: svgfeat.load_encoder(model="test_tiny", svg_config=y))
    for name in ("w.pth", "w.safetensors", "w.ckpt"):
        w = fifo(name)
        refused(w, lambda w=w: ck.load_file(w))
        refused(w, lambda w=w: ck.sha256_file(w))
    st = fifo("cfg.safetensors")
    refused(st, lambda: ck.read_safetensors_config(st))
    d = fifo("dino.pth")
    refused(d, lambda: svgfeat.load_encoder(dinov3=d))


def test_dit_config_and_latent_stats(fifo):
    from svgfeat.generation.stats import load_stats
    from svgfeat.models.dit import read_dit_config

    for name in ("cfg.json", "cfg.yaml"):
        c = fifo(name)
        refused(c, lambda c=c: read_dit_config(c))
    for name in ("stats.pt", "stats.json", "stats.npz"):
        s = fifo(name)
        refused(s, lambda s=s: load_stats(s))


def test_index_sidecar_keys_and_file(fifo, tmp_path):
    from svgfeat.heads.retrieval import FaissIndex, read_sidecar

    idx = tmp_path / "i.faiss"
    idx.write_bytes(b"x")
    side = fifo("i.faiss.json")
    refused(side, lambda: read_sidecar(idx))
    # a real index whose data file is a FIFO
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    built = FaissIndex("Flat", metric="cosine", backend="torch").fit(x)
    good = tmp_path / "good.st"
    built.save(good)
    assert FaissIndex.load(good).ntotal_ == 20
    good.unlink()
    os.mkfifo(good)
    refused(good, lambda: FaissIndex.load(good))


def test_fid_statistics_file(fifo):
    from svgfeat.evaluation.fid import read_npz

    f = fifo("ref.npz")
    refused(f, lambda: read_npz(f, ["mu", "sigma"]))


def test_dataset_lists_labels_and_classes(fifo, tmp_path):
    from PIL import Image

    from svgfeat.data import open_dataset

    lst = fifo("list.txt")
    refused(lst, lambda: open_dataset(lst))
    folder = tmp_path / "val"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    labels = fifo("labels.txt")
    refused(labels, lambda: open_dataset(folder, labels=labels))


def test_segmentation_classes_txt(fifo, tmp_path):
    from svgfeat.data.segmentation import open_seg_dataset, write_folder_dataset

    root = tmp_path / "seg"
    write_folder_dataset(open_seg_dataset("sample:digitseg/val"), root, split="train")
    assert open_seg_dataset(str(root), "train").classes
    (root / "classes.txt").unlink()
    os.mkfifo(root / "classes.txt")
    refused(root / "classes.txt", lambda: open_seg_dataset(str(root), "train"))


def test_cli_svg_config_and_pretrained_override_are_one_line(tmp_path):
    """The two paths of the report, end to end: --svg-config FIFO and SVGFEAT_PRETRAINED_* = FIFO."""
    y = tmp_path / "ae.yaml"
    os.mkfifo(y)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SVGFEAT_PRETRAINED_DINOV3": str(y), "SVGFEAT_PRETRAINED_SVG": str(y)}
    for args in (["export", "--model", "test_tiny", "--svg-config", y, "-o", tmp_path / "e.ckpt"],
                 ["export", "--pretrained", "-o", tmp_path / "p.ckpt"]):
        r = subprocess.run([sys.executable, "-m", "svgfeat", *map(str, args)], capture_output=True, text=True,
                           timeout=60, env=env)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.yaml"]
