"""One error path: every user mistake is ONE line `Error: ...` with exit 2 and no traceback; environment
failures (disk full, unwritable output, port in use) are one line with a non-zero exit and leave nothing behind.

Environment failures are real, not simulated: ``/dev/full`` answers every write with ENOSPC, and ``/sys``
refuses new files even to root (EACCES/EPERM), which also holds for non-root CI users.
"""

import errno
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from svgfeat.cli import main

SIZES = ["100", "17", "0", "-64"]


def run_main(capsys, *args):
    """(exit code, stdout, stderr) of svgfeat.cli.main in this process."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(capsys, *args, code=2) -> str:
    rc, out, err = run_main(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, (rc, out, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


def run_sub(*args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "svgfeat", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return r, lines


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    return p


# ------------------------------------------------------------------------------------------ option types
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cmd", ["extract", "encode", "reconstruct", "pca", "interpolate", "eval-recon"])
def test_bad_size_is_one_line(capsys, tmp_path, img, cmd, size):
    args = {"extract": ["extract", "sample:digits/val", "-o", tmp_path / "c"],
            "encode": ["encode", img, "-o", tmp_path / "f.safetensors"],
            "reconstruct": ["reconstruct", img, "-o", tmp_path / "r.png"],
            "pca": ["pca", img, "-o", tmp_path / "p"],
            "interpolate": ["interpolate", img, img, "-o", tmp_path / "i.png"],
            "eval-recon": ["eval-recon", "sample:photos"]}[cmd]
    line = one_line_error(capsys, *args, "--model", "test_tiny", "--size", size)
    assert "--size" in line and repr(size) in line and "multiple of 16" in line
    assert not (tmp_path / "c").exists()


def test_bad_size_eval_imagenet_and_train_ae(capsys, tmp_path):
    line = one_line_error(capsys, "eval", "imagenet", "--root", "sample", "--model", "test_tiny", "-o", tmp_path,
                          "--size", "100")
    assert "'100'" in line and "multiple of 16" in line
    line = one_line_error(capsys, "train-ae", "sample:photos", "--out", tmp_path / "ae", "--model", "test_tiny",
                          "--size", "17")
    assert "'17'" in line and "multiple of 16" in line


@pytest.mark.parametrize("cmd", ["encode", "extract", "knn", "probe", "search", "serve", "seg", "fid", "train-dit"])
def test_bad_device_is_one_line(capsys, tmp_path, img, cmd):
    import torch

    args = {"encode": ["encode", img, "-o", tmp_path / "f.safetensors", "--model", "test_tiny"],
            "extract": ["extract", "sample:digits/val", "-o", tmp_path / "c", "--model", "test_tiny"],
            "knn": ["knn", "--train", tmp_path, "--val", tmp_path, "-o", tmp_path / "k.json"],
            "probe": ["probe", "--train", tmp_path, "-o", tmp_path / "p.json"],
            "search": ["search", img, "q"],
            "serve": ["serve", img],
            "seg": ["seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--out", tmp_path / "s"],
            "fid": ["fid", img, img],
            "train-dit": ["train-dit", tmp_path, "-o", tmp_path / "d"]}[cmd]
    line = one_line_error(capsys, *args, "--device", "banana")
    assert "'banana'" in line and "cpu" in line
    line = one_line_error(capsys, *args, "--device", "cuda:99")
    assert "'cuda:99'" in line
    if not torch.cuda.is_available():
        line = one_line_error(capsys, *args, "--device", "cuda")
        assert "'cuda'" in line and "no CUDA" in line


def test_unknown_model_lists_registered_names(capsys, tmp_path, img):
    line = one_line_error(capsys, "encode", img, "-o", tmp_path / "f.safetensors", "--model", "nosuch")
    assert "'nosuch'" in line and "test_tiny" in line and "svg_vits16plus" in line
    line = one_line_error(capsys, "train-dit", tmp_path, "-o", tmp_path / "d", "--model", "test_tiny")
    assert "'test_tiny'" in line and "svg_dit_xl" in line  # a DiT is expected here, not an encoder


@pytest.mark.parametrize("opt,value,expect", [("--workers", "-1", "'-1'"), ("--batch-size", "0", "'0'"),
                                              ("--limit", "-5", "'-5'"), ("--shard-size", "0", "'0'"),
                                              ("--views", "0", "'0'")])
def test_extract_counts_are_validated(capsys, tmp_path, opt, value, expect):
    line = one_line_error(capsys, "extract", "sample:digits/val", "-o", tmp_path / "c", "--model", "test_tiny",
                          "--size", "64", opt, value)
    assert opt in line and expect in line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("opt,value", [("--crop-size", "30"), ("--crop-size", "0"), ("--slide-crop", "8"),
                                       ("--workers", "-1"), ("--batch-size", "0"), ("--iters", "0")])
def test_seg_options_are_validated(capsys, tmp_path, opt, value):
    line = one_line_error(capsys, "seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--out",
                          tmp_path / "s", opt, value)
    assert opt in line and repr(value) in line


def test_other_commands_validate_counts(capsys, tmp_path):
    line = one_line_error(capsys, "eval", "imagenet", "--root", "sample", "--model", "test_tiny", "-o", tmp_path,
                          "--workers", "-2")
    assert "--workers" in line and "'-2'" in line
    line = one_line_error(capsys, "eval", "imagenet", "--root", "sample", "--model", "test_tiny", "-o", tmp_path,
                          "--limit", "-5")
    assert "--limit" in line and "'-5'" in line
    line = one_line_error(capsys, "probe", "--train", tmp_path, "-o", tmp_path / "p.json", "--batch-size", "0")
    assert "--batch-size" in line


def test_click_usage_errors_are_one_line(capsys, tmp_path):
    line = one_line_error(capsys, "extract", "sample:digits/val")  # missing -o
    assert "-o" in line or "--out" in line
    line = one_line_error(capsys, "nosuchcommand")
    assert "nosuchcommand" in line
    line = one_line_error(capsys, "extract", "sample:digits/val", "-o", tmp_path / "c", "--size", "abc")
    assert "'abc'" in line


# ------------------------------------------------------------------------------------------ corrupt files
def test_corrupt_fid_npz_is_one_line(capsys, tmp_path, img):
    bad = tmp_path / "ref.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    line = one_line_error(capsys, "fid", img.parent, bad)
    assert "ref.npz" in line
    pick = tmp_path / "pickled.npz"
    np.save(pick.with_suffix(".npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pick.write_bytes(pick.with_suffix(".npy").read_bytes())
    line = one_line_error(capsys, "fid", img.parent, pick)
    assert "pickled.npz" in line
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    line = one_line_error(capsys, "fid", empty, bad)  # SAMPLES checked too
    assert ".npz" in line


@pytest.fixture(scope="module")
def built_index(tmp_path_factory):
    from _retrieval_helpers import tiny_cache

    from conftest import require_extra

    require_extra("faiss")  # the [faiss] extra: skipped without it locally, a failure under CI=true

    from svgfeat.heads.retrieval import FaissIndex

    cache = tiny_cache("test_tiny")
    d = tmp_path_factory.mktemp("idx")
    path = FaissIndex().fit(cache).save(d / "g.faiss")
    return cache, path


@pytest.mark.parametrize("damage", ["pickle", "empty", "truncated", "garbage"])
def test_broken_index_file_is_reported(capsys, tmp_path, built_index, damage):
    cache, good = built_index
    path = tmp_path / "g.faiss"
    data = good.read_bytes()
    path.write_bytes({"pickle": pickle.dumps({"index": list(range(100))}), "empty": b"",
                      "truncated": data[: len(data) // 2], "garbage": os.urandom(len(data))}[damage])
    (tmp_path / "g.faiss.json").write_bytes(good.with_name("g.faiss.json").read_bytes())
    line = one_line_error(capsys, "index", "info", path)
    assert "g.faiss" in line
    line = one_line_error(capsys, "search", path, f"{cache.root}:0")
    assert "g.faiss" in line
    rc, out, err = run_main(capsys, "index", "info", good)
    assert rc == 0, err


def test_index_without_sidecar_and_corrupt_sidecar(capsys, tmp_path, built_index):
    cache, good = built_index
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    line = one_line_error(capsys, "index", "info", p)
    assert "x.pkl" in line
    (tmp_path / "x.pkl.json").write_text("[1, 2")
    line = one_line_error(capsys, "index", "info", p)
    assert "x.pkl.json" in line
    (tmp_path / "x.pkl.json").write_text("[1, 2]")
    line = one_line_error(capsys, "search", p, f"{cache.root}:0")
    assert "x.pkl.json" in line


# ------------------------------------------------------------------------------------------ environment
def test_disk_full_is_one_line_and_leaves_nothing(capsys, tmp_path, built_index):
    """/dev/full: a real ENOSPC on write."""
    cache, good = built_index
    line = one_line_error(capsys, "search", good, f"{cache.root}:0", "--html", "/dev/full", code=1)
    assert "No space left on device" in line and "/dev/full" in line
    rc, out, err = run_main(capsys, "index", "build", cache.root, "-o", "/dev/full")
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and "/dev/full" in lines[0], err
    rc, out, err = run_main(capsys, "encode", photo_path(cache), "-o", "/dev/full", "--model", "test_tiny", "--size",
                            "64")
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and "/dev/full" in lines[0], err
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")  # never replaced by a regular file
    assert not [p for p in os.listdir("/dev") if p.startswith((".full", "full."))]


def photo_path(cache):
    from _retrieval_helpers import photo_folder

    return photo_folder() / "imgs" / cache.paths[0]


def test_disk_full_midway_leaves_no_partial_output(capsys, tmp_path, built_index, monkeypatch):
    """ENOSPC in the middle of writing a regular file: no half-written output and no temporary file stays."""
    cache, good = built_index
    from svgfeat.serve import report

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "render_report", lambda *a, **k: "x" * 100)
    real_open = open

    class Half:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, s):
            self.f.write(s[:10])
            self.f.flush()
            full()

    def fake_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Half(f) if ("w" in mode or "x" in mode) and str(file).startswith(str(tmp_path)) else f

    import builtins

    monkeypatch.setattr(builtins, "open", fake_open)
    line = one_line_error(capsys, "search", good, f"{cache.root}:0", "--html", tmp_path / "r.html", code=1)
    monkeypatch.undo()
    assert "No space left on device" in line
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_one_line(capsys, tmp_path, img, built_index):
    """/sys refuses new files and folders, even to root (chmod 0555 would not stop root). One run as a real
    subprocess (the installed entry point), the others in-process."""
    target = "/sys/svgfeat-test-output"
    r, lines = run_sub("extract", "sample:digits/val", "-o", target, "--model", "test_tiny", "--size", "64",
                       "--limit", "4")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and target in lines[0], lines
    for args in (["index", "build", built_index[0].root, "-o", f"{target}.faiss"],
                 ["reconstruct", img, "-o", target, "--model", "test_tiny", "--size", "64"],
                 ["encode", img, "-o", f"{target}.safetensors", "--model", "test_tiny", "--size", "64"]):
        rc, out, err = run_main(capsys, *args)
        lines = err.strip().splitlines()
        assert rc != 0 and "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith("Error: ") and target in lines[0], lines
    assert not os.path.exists(target)


def test_file_where_a_folder_is_expected(capsys, tmp_path, img):
    """Refused while the outputs are checked, before any work (a user mistake: exit status 2)."""
    f = tmp_path / "afile"
    f.write_text("x")
    line = one_line_error(capsys, "reconstruct", img, img, "-o", f / "sub", "--model", "test_tiny", "--size", "64",
                          code=2)
    assert "afile" in line
    assert f.read_text() == "x"


# ------------------------------------------------------------------------------------------ serve
def test_serve_port_in_use_and_bad_host(capsys, built_index):
    cache, good = built_index
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        line = one_line_error(capsys, "serve", good, "--port", port)
        assert str(port) in line and "in use" in line
    finally:
        s.close()
    line = one_line_error(capsys, "serve", good, "--host", "no such host!", "--port", "0")
    assert "'no such host!'" in line


# ------------------------------------------------------------------------------------------ knn / probe
@pytest.fixture(scope="module")
def digit_caches(tmp_path_factory):
    import svgfeat

    d = tmp_path_factory.mktemp("digits")
    kw = dict(model="test_tiny", groups=["cls", "pooled"], progress=False)
    tr = svgfeat.extract("sample:digits/train", d / "tr64", size=64, limit=30, **kw)
    va = svgfeat.extract("sample:digits/val", d / "va80", size=80, limit=20, **kw)
    return tr, va


@pytest.mark.parametrize("cmd", ["knn", "probe"])
def test_knn_probe_refuse_caches_of_different_sizes(capsys, tmp_path, digit_caches, cmd):
    tr, va = digit_caches
    args = ["--train", tr.root, "--val", va.root, "-o", tmp_path / "r.json"]
    line = one_line_error(capsys, cmd, *args, *(["-k", "5"] if cmd == "knn" else ["--epochs", "1"]))
    assert "size: train 64, val 80" in line and "--size" in line
    assert not (tmp_path / "r.json").exists()


def test_protocol_train_and_val_presets_may_differ_at_the_same_size():
    """dinov3/svg protocols: random-resized-crop train views and centre-crop val at 224 are one resolution."""
    from types import SimpleNamespace

    from svgfeat.errors import CacheError
    from svgfeat.heads._features import check_same_transform

    tr = SimpleNamespace(root="tr", transform={"preset": "rrc", "size": 224})
    check_same_transform(tr, SimpleNamespace(root="va", transform={"preset": "center-crop", "size": 224}))
    with pytest.raises(CacheError, match="size: train 224, val 256"):
        check_same_transform(tr, SimpleNamespace(root="va", transform={"preset": "center-crop", "size": 256}))


# ------------------------------------------------------------------------------------------ every option at the edge
def _base(cmd, tmp_path, img):
    return {"knn": ["knn", "--train", tmp_path, "--val", tmp_path, "-o", tmp_path / "k.json"],
            "probe": ["probe", "--train", tmp_path, "-o", tmp_path / "p.json"],
            "eval": ["eval", "imagenet", "--root", "sample", "--model", "test_tiny", "-o", tmp_path / "e"],
            "seg": ["seg", "train", "--data", "sample:digitseg", "--model", "test_tiny", "--out", tmp_path / "s"],
            "depth": ["depth", "train", "--data", "sample:depth", "--model", "test_tiny", "--out", tmp_path / "d"],
            "train-dit": ["train-dit", tmp_path, "-o", tmp_path / "dit"],
            "generate": ["generate", "--classes", "1", "-o", tmp_path / "g"],
            "train-ae": ["train-ae", "sample:photos", "--out", tmp_path / "ae", "--model", "test_tiny"],
            "index": ["index", "build", tmp_path, "-o", tmp_path / "i.faiss"],
            "search": ["search", img, "q"],
            "serve": ["serve", img]}[cmd]


BAD_OPTIONS = [  # (command, option, value): each must be refused while parsing, naming the option and the value
    ("knn", "-k", "10^12"), ("knn", "-k", "1000000000000"), ("knn", "-k", "0"), ("knn", "-k", "10,nan"),
    ("knn", "-T", "inf"), ("knn", "-T", "nan"), ("knn", "-T", "0"), ("knn", "-T", "-1"),
    ("probe", "--wd", "nan"), ("probe", "--wd", "-1"), ("probe", "--lrs", "nan"), ("probe", "--lrs", "0.1,inf"),
    ("probe", "--lrs", "0"), ("probe", "--heldout-fraction", "1.5"), ("probe", "--heldout-fraction", "nan"),
    ("probe", "--iterations", "-5"), ("probe", "--epochs", "0"), ("probe", "--min-iterations", "-1"),
    ("eval", "-T", "inf"), ("eval", "-k", "10^12"), ("eval", "--wd", "nan"),
    ("seg", "--lr", "nan"), ("seg", "--lr", "-1"), ("seg", "--weight-decay", "nan"),
    ("depth", "--lr", "nan"), ("depth", "--lr", "-1"), ("depth", "--grad-clip", "-1"),
    ("train-dit", "--lr", "nan"), ("train-dit", "--lr", "-1"), ("train-dit", "--ema-decay", "2"),
    ("train-dit", "--ema-decay", "nan"), ("train-dit", "--grad-clip", "-1"), ("train-dit", "--weight-decay", "inf"),
    ("train-dit", "--shift", "0"), ("train-dit", "--class-dropout", "1.5"),
    ("generate", "--cfg", "nan"), ("generate", "--cfg", "inf"), ("generate", "--shift", "0"),
    ("generate", "--shift", "nan"), ("generate", "--steps", "1000000000"),
    ("train-ae", "--lr", "nan"), ("train-ae", "--disc-weight", "nan"), ("train-ae", "--mask-ratio", "1.5"),
    ("index", "--target-recall", "0"), ("index", "--target-recall", "1.5"), ("index", "--target-recall", "nan"),
    ("index", "--time-budget", "inf"), ("index", "--time-budget", "-1"), ("index", "--nprobe", "0"),
    ("search", "-k", "1000000000000"), ("serve", "--body-timeout", "nan"), ("serve", "--body-timeout", "inf"),
]


@pytest.mark.parametrize("cmd,opt,value", BAD_OPTIONS)
def test_numeric_options_are_finite_and_in_range(capsys, tmp_path, img, cmd, opt, value):
    line = one_line_error(capsys, *_base(cmd, tmp_path, img), opt, value)
    assert opt in line and repr(value) in line and "expected" in line, line


@pytest.mark.parametrize("args", [["extract", "", "-o", "OUT"], ["extract", "  ", "-o", "OUT"],
                                  ["index", "build", "", "-o", "OUT"], ["stats", ""], ["train-dit", "", "-o", "OUT"]])
def test_empty_path_is_refused_not_the_current_folder(capsys, tmp_path, args):
    line = one_line_error(capsys, *[tmp_path / "o" if a == "OUT" else a for a in args])
    assert "empty" in line, line
    assert not (tmp_path / "o").exists()


def test_absurd_image_size_is_refused_with_an_estimate(capsys, tmp_path, img):
    line = one_line_error(capsys, "extract", "sample:digits/val", "-o", tmp_path / "c", "--model", "test_tiny",
                          "--size", "65536")
    assert "--size" in line and "'65536'" in line and "4096" in line and "patches" in line, line
    line = one_line_error(capsys, "encode", img, "-o", tmp_path / "f.safetensors", "--model", "test_tiny",
                          "--size", "65536")
    assert "'65536'" in line


@pytest.mark.parametrize("spec", ["hf://../../etc/passwd", "hf://org/../x", "hf://org/name/../../x",
                                  "hf://./name/f.pt", "hf://org/name/a\\..\\b", "hf://org/na me/f.pt"])
def test_hub_specs_that_climb_out_are_refused(capsys, tmp_path, img, spec):
    from svgfeat.errors import ConfigError
    from svgfeat.hub import HubFile

    with pytest.raises(ConfigError, match="Hub file spec"):
        HubFile.parse(spec)
    line = one_line_error(capsys, "encode", img, "-o", tmp_path / "f.safetensors", "--model", "test_tiny",
                          "--svg", spec)
    assert "Hub file spec" in line and not (tmp_path / "f.safetensors").exists()


def test_train_dit_that_cannot_fit_is_refused_with_the_estimate(capsys, tmp_path, monkeypatch):
    from svgfeat.cache import from_arrays
    from svgfeat.generation.memory_estimate import train_memory_bytes

    lat = np.zeros((4, 392, 16, 16), np.float16)
    c = from_arrays(tmp_path / "lat", {"latent": lat}, labels=np.arange(4) % 2, durable=False)
    monkeypatch.setenv("SVGFEAT_MEMORY_BUDGET", "24GB")  # a 24 GB machine, whatever this one has
    line = one_line_error(capsys, "train-dit", c.root, "-o", tmp_path / "run", "--model", "svg_dit_xl",
                          "--steps", "1")
    assert "svg_dit_xl at 256 samples per process needs about" in line and "676M parameters" in line, line
    assert "more than the 24.0 GB" in line and "--batch-size" in line
    assert not (tmp_path / "run").exists()
    # the estimate grows with the batch and is dominated by parameters x 20 bytes when the batch is 1
    a, b = (train_memory_bytes(676_000_000, 28, 1152, 16, 256, n) for n in (1, 2))
    assert a["static"] == 20 * 676_000_000 and b["activations"] == 2 * a["activations"] > 0


def test_text_files_that_are_not_utf8_are_one_line(capsys, tmp_path, img):
    from svgfeat.data import open_dataset
    from svgfeat.data.datasets import flat_with_labels
    from svgfeat.data.segmentation import open_seg_dataset, write_folder_dataset
    from svgfeat.errors import DataError

    lst = tmp_path / "list.txt"
    lst.write_bytes(f"{img} 0\n".encode() + "caf\xe9.png 1\n".encode("latin-1"))
    line = one_line_error(capsys, "extract", lst, "-o", tmp_path / "c", "--model", "test_tiny", "--size", "32")
    assert "not UTF-8" in line and "0xe9" in line and "line 2" in line and str(lst) in line, line
    assert not (tmp_path / "c").exists()
    with pytest.raises(DataError, match="file list .* not UTF-8"):
        open_dataset(lst)
    labels = tmp_path / "val.txt"
    labels.write_bytes(b"a.png n01\n\xff\xfe\x00b.png n02\n")
    with pytest.raises(DataError, match="label file .* not UTF-8 .*line 2"):
        flat_with_labels(img.parent, labels)
    seg = write_folder_dataset(open_seg_dataset("sample:digitseg/val"), tmp_path / "seg")
    (seg / "classes.txt").write_bytes("fond\nchâteau\n".encode("cp1252"))
    with pytest.raises(DataError, match="class list .* not UTF-8"):
        open_seg_dataset(seg)
    (seg / "classes.txt").write_bytes("\ufefffond\nchâteau\n".encode())  # UTF-8 with a BOM reads fine
    assert open_seg_dataset(seg).classes[:2] == ["fond", "château"]


@pytest.mark.parametrize("edit", ["ddconfig.z_channels: abc", "ddconfig.ch_mult: [1, x]", "ddconfig: [1, 2]",
                                  "params: 5", "top: [list]", "bytes", "ddconfig.dropout: 2"])
def test_yaml_configs_with_wrong_types_are_one_line(capsys, tmp_path, img, golden, edit):
    import yaml

    from svgfeat.checkpoints import load_yaml, svg_config_from_yaml
    from svgfeat.errors import ConfigError

    cfg = yaml.safe_load(golden("svg_ae_shared.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    if edit == "top: [list]":
        bad.write_text("- 1\n- 2\n")
    elif edit == "bytes":
        bad.write_bytes(b"model:\n  target: caf\xe9\n")
    else:
        key, value = edit.split(": ", 1)
        node = cfg["model"] if key == "params" else cfg["model"]["params"]
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = yaml.safe_load(value)
        bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="YAML"):
        svg_config_from_yaml(load_yaml(bad))
    line = one_line_error(capsys, "encode", img, "-o", tmp_path / "f.safetensors", "--dinov3",
                          golden("dinov3_vits16plus_random.pth"), "--svg", golden("svg_ae_shared.ckpt"),
                          "--svg-config", bad)
    assert "YAML" in line and "Traceback" not in line, line
