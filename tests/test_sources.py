"""Tar shards, parquet, save_to_disk folders and hf:// datasets behave exactly like a folder of the same JPEGs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _source_helpers import (
    CLASSES,
    jpegs,
    tar_member,
    tree_state,
    write_folder,
    write_hf_cache,
    write_parquet,
    write_saved,
    write_tars,
)

import svgfeat
from conftest import require_extra
from svgfeat.cli import main
from svgfeat.data import open_dataset
from svgfeat.errors import CacheError, DataError

KW = dict(model="test_tiny", size=32, shard_size=8, batch_size=4, progress=False, groups=("cls", "pooled", "latent"))
BATCH_INDEPENDENT = ("cls", "pooled")  # latent: batch-statistics alignment depends on the batch's members


@pytest.fixture(autouse=True)
def _index_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SVGFEAT_INDEX_DIR", str(tmp_path / "index"))


@pytest.fixture(scope="module")
def items():
    return jpegs(24)


def run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "svgfeat", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def stem(path: str) -> str:
    return path.split(":")[-1].split("/")[-1].split(".")[0]


def by_key(cache):
    return {stem(p): i for i, p in enumerate(cache.paths)}


def test_folder_tar_parquet_give_identical_features_and_labels(tmp_path, items):
    require_extra("pyarrow", "hf")
    folder = write_folder(tmp_path / "folder", items)
    write_tars(tmp_path / "tars", items)
    write_parquet(tmp_path / "pq" / "data", items)
    write_saved(tmp_path / "saved", items)
    caches = {name: svgfeat.extract(spec, tmp_path / f"out_{name}", **KW) for name, spec in [
        ("folder", folder), ("tar", tmp_path / "tars"), ("parquet", tmp_path / "pq" / "data"),
        ("saved", tmp_path / "saved")]}
    ref = caches.pop("folder")
    kr = by_key(ref)
    assert len(kr) == 24 and ref.classes == CLASSES
    ref_names = {k: ref.classes[ref.labels[i]] for k, i in kr.items()}
    for name, c in caches.items():
        kc = by_key(c)
        assert sorted(kc) == sorted(kr), name
        # the same class per image (tars carry integer labels: their names are the indices)
        names = {k: CLASSES[int(c.classes[c.labels[i]])] if name == "tar" else c.classes[c.labels[i]]
                 for k, i in kc.items()}
        assert names == ref_names, name
        for g in BATCH_INDEPENDENT:
            a, b = ref.read(g), c.read(g)
            for k in kr:
                assert np.array_equal(a[kr[k]], b[kc[k]]), (name, g, k)
    assert caches["parquet"].classes == CLASSES and caches["saved"].classes == CLASSES


@pytest.mark.parametrize("opts", [dict(limit=10, views=2, preset="rrc"), dict(gpu_decode=True, preset="center-crop")])
def test_views_limit_and_device_decoding_on_tars_match_the_folder(tmp_path, items, opts):
    folder = write_folder(tmp_path / "folder", items)
    write_tars(tmp_path / "tars", items)
    # the folder in the tars' item order (class folders are sorted by class): a file list
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"folder/{CLASSES[lab]}/{k}.JPEG {lab}\n" for k, _, lab in items))
    assert folder.is_dir()
    kw = {**KW, **opts}
    a = svgfeat.extract(lst, tmp_path / "a", **kw)
    b = svgfeat.extract(tmp_path / "tars", tmp_path / "b", **kw)
    assert len(a) == len(b) == (20 if "limit" in opts else 24)
    assert [stem(p) for p in a.paths] == [stem(p) for p in b.paths] and (a.labels == b.labels).all()
    assert list(a.view_ids) == list(b.view_ids)
    for g in a.groups:  # the same items in the same batches: every group is equal
        assert np.array_equal(a.read(g), b.read(g)), g


def test_every_spec_form_opens_the_same_items(tmp_path, items, monkeypatch):
    require_extra("pyarrow", "hf")
    tars = write_tars(tmp_path / "tars", items)
    write_parquet(tmp_path / "pq" / "data", items)
    keys = [k for k, _, _ in items]
    for spec in [tmp_path / "tars", f"{tmp_path}/tars/train-{{0000..0002}}.tar", f"{tmp_path}/tars/*.tar"]:
        ds = open_dataset(spec)
        assert ds.kind == "wds" and [stem(p) for p in ds.paths] == keys and ds.labels.tolist() == [
            lab for *_, lab in items], spec
    assert [stem(p) for p in open_dataset(tars[1]).paths] == keys[10:20]
    for spec in [tmp_path / "pq" / "data", f"{tmp_path}/pq/data/*.parquet",
                 tmp_path / "pq" / "data" / "train-00000-of-00002.parquet"]:
        ds = open_dataset(spec)
        assert ds.kind == "parquet" and [stem(p) for p in ds.paths] == keys[:len(ds)] and ds.classes == CLASSES
    hub = tmp_path / "hub"
    write_hf_cache(hub, "ILSVRC", "imagenet-1k", items)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = open_dataset("hf://datasets/ILSVRC/imagenet-1k/train")
    assert ds.kind == "hf" and [stem(p) for p in ds.paths] == keys and ds.classes == CLASSES
    assert len(open_dataset("hf://datasets/ILSVRC/imagenet-1k@main/validation")) == 6
    assert len(open_dataset("hf://datasets/ILSVRC/imagenet-1k/data/validation-*.parquet")) == 6
    with pytest.raises(DataError, match="splits train, validation"):
        open_dataset("hf://datasets/ILSVRC/imagenet-1k")
    assert np.array_equal(np.asarray(ds.load(5)), np.asarray(open_dataset(tmp_path / "tars").load(5)))
    # --format overrides detection
    with pytest.raises(DataError, match="no images"):
        open_dataset(tmp_path / "tars", format="folder")


def test_hf_spec_errors_are_one_line(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "SVGFEAT_INDEX_DIR": str(tmp_path / "i")}
    for spec, expect in [("hf://datasets/nobody/nothing", "hf://datasets/nobody/nothing is not in the local"),
                         ("hf://../../etc/passwd", "not a Hugging Face dataset spec"),
                         ("hf://datasets/org/../x", "not a Hugging Face dataset spec"),
                         ("hf://datasets/org/x/../../../etc", "not a Hugging Face dataset spec")]:
        r = cli("extract", spec, "-o", tmp_path / "o", "--model", "test_tiny", env=env)
        assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_shards_are_recorded_failures_or_one_line(tmp_path, items):
    d = tmp_path / "tars"
    good = write_tars(d, items[:6], per_shard=3)
    blob = good[1].read_bytes()
    good[1].write_bytes(blob[:2000])  # truncated inside the first image
    (d / "train-0002.tar").write_bytes(b"")  # an empty shard (interrupted download)
    import tarfile

    with tarfile.open(d / "train-0003.tar", "w") as tf:  # a sample without image, a member that is not one
        tar_member(tf, "lonely.cls", b"1")
        tar_member(tf, "text.jpg", b"this is not a JPEG")
        tar_member(tf, "text.cls", b"2")
    c = svgfeat.extract(d, tmp_path / "out", **KW)
    reasons = {stem(p): r.split(":")[0] for p, r in c.failures}
    assert len(c) == 3 and [stem(p) for p in c.paths] == [k for k, _, _ in items[:3]]
    assert reasons["lonely"] == "no-image" and reasons["text"] == "not-an-image"
    assert "empty-file" in reasons.values() and "truncated" in reasons.values()
    (d / "train-0004.tar").write_bytes(b"\x00garbage" * 100)
    r = cli("extract", d, "-o", tmp_path / "o2", "--model", "test_tiny", env={"SVGFEAT_INDEX_DIR": str(tmp_path)})
    assert r.returncode == 2 and "train-0004.tar is not an uncompressed tar" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_parquet_errors_are_one_line(tmp_path, items, monkeypatch):
    require_extra("pyarrow", "hf")
    write_parquet(tmp_path / "nolabel", items[:4], n_files=1, with_label=False)
    r = cli("extract", tmp_path / "nolabel", "-o", tmp_path / "o", "--model", "test_tiny")
    assert r.returncode == 2 and "has no 'label' column (columns: image)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    write_parquet(tmp_path / "data", items[:4], n_files=1, split="train")
    write_parquet(tmp_path / "data", items[4:8], n_files=1, split="validation")
    with pytest.raises(DataError, match="holds the splits train, validation"):
        open_dataset(tmp_path / "data")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r'pip install "svgfeat\[hf\]"'):
        open_dataset(tmp_path / "nolabel")


def test_nothing_is_written_in_the_source_and_a_changed_item_list_is_refused(tmp_path, items):
    d = tmp_path / "tars"
    write_tars(d, items[:16], per_shard=8)
    before = tree_state(d)
    svgfeat.extract(d, tmp_path / "out", **KW)
    assert tree_state(d) == before
    with pytest.raises(Exception, match="inside the input folder"):
        svgfeat.extract(d, d / "cache", **KW)
    assert tree_state(d) == before
    write_tars(d, items[16:], per_shard=8, prefix="train-extra")
    with pytest.raises(CacheError, match=r"1 new file\(s\) \(first: train-extra-0000.tar\)"):
        svgfeat.extract(d, tmp_path / "out", **KW)


def _cmd(src, out):
    return [sys.executable, "-m", "svgfeat", "extract", str(src), "-o", str(out), "--model", "test_tiny", "--size",
            "64", "--shard-size", "12", "--batch-size", "6"]


def test_resume_after_sigkill_on_tars_is_identical(tmp_path):
    items = jpegs(120, seed=1, size=96)
    d = tmp_path / "tars"
    write_tars(d, items, per_shard=25)
    env = dict(os.environ, SVGFEAT_INDEX_DIR=str(tmp_path / "index"), OMP_NUM_THREADS="1")
    ref = subprocess.run(_cmd(d, tmp_path / "ref"), capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    p = subprocess.Popen(_cmd(d, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard-*.safetensors"))) < 2:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(out.glob("shard-*.safetensors")))
    assert 0 < done < 10, f"kill landed after {done} shards"
    r = subprocess.run(_cmd(d, out), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    a, b = svgfeat.open_cache(tmp_path / "ref"), svgfeat.open_cache(out)
    assert a.paths == b.paths and (a.labels == b.labels).all()
    for g in a.groups:
        assert np.array_equal(a.read(g), b.read(g)), g
    assert [s["sha256"] for s in a.manifest["shards"]] == [s["sha256"] for s in b.manifest["shards"]]


def test_torchrun_two_ranks_on_tars_equal_one(tmp_path, items):
    d = tmp_path / "tars"
    write_tars(d, items, per_shard=7)
    one = svgfeat.extract(d, tmp_path / "one", model="test_tiny", size=32, shard_size=5, batch_size=4, progress=False)
    env = dict(os.environ, SVGFEAT_BACKEND="gloo", OMP_NUM_THREADS="1", SVGFEAT_INDEX_DIR=str(tmp_path / "index"))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29541", "-m", "svgfeat", "extract", f"{d}/train-{{0000..0003}}.tar", "-o",
                        str(tmp_path / "two"), "--model", "test_tiny", "--size", "32", "--shard-size", "5",
                        "--batch-size", "4"], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    two = svgfeat.open_cache(tmp_path / "two")
    assert one.paths == two.paths and (one.labels == two.labels).all()
    for g in one.groups:
        assert np.array_equal(one.read(g), two.read(g)), g


def test_eval_imagenet_on_tar_and_parquet_roots(tmp_path):
    require_extra("pyarrow", "hf")
    train, val = jpegs(18, seed=2), jpegs(6, seed=3)
    wds = tmp_path / "wds"
    write_tars(wds, train, per_shard=9, prefix="imagenet1k-train")
    write_tars(wds, val, per_shard=6, prefix="imagenet1k-validation")
    hf = tmp_path / "hf"
    write_parquet(hf / "data", train, split="train")
    write_parquet(hf / "data", val, n_files=1, split="validation")
    (hf / "README.md").write_text("ILSVRC/imagenet-1k layout\n")
    tops = {}
    for name, root in [("wds", wds), ("hf", hf)]:
        out = tmp_path / f"eval_{name}"
        before = tree_state(root)
        assert run(["eval", "imagenet", "--root", str(root), "--model", "test_tiny", "--size", "64", "--out",
                    str(out), "--min-iterations", "20", "--lrs", "0.01,0.1", "-k", "3"]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["train"]["rows"] == 18 and res["val"]["evaluated"] == 6, name
        assert tree_state(root) == before
        tops[name] = res["knn"]["k"]["3"]["top1"]
    assert tops["wds"] == tops["hf"]  # same images, same labels, same kNN
    out = tmp_path / "explicit"
    assert run(["eval", "imagenet", "--train", f"{wds}/imagenet1k-train-{{0000..0001}}.tar", "--val",
                str(hf / "data" / "validation-00000-of-00001.parquet"), "--model", "test_tiny", "--size", "64",
                "--out", str(out), "--min-iterations", "20", "--lrs", "0.1", "--no-knn"]) == 0


def test_help_shows_every_form():
    r = cli("extract", "--help")
    for form in ("train-{0000..1023}.tar", "timm/imagenet-1k-wds", ".parquet", "ILSVRC/imagenet-1k", "save_to_disk",
                 "hf://datasets/ORG/NAME", "--format", "--hash-sources"):
        assert form in r.stdout, form
    r = cli("eval", "imagenet", "--help")
    for form in ("imagenet1k-{train,validation}-*.tar", "data/{train,validation}-*.parquet", "--train", "--val"):
        assert form in r.stdout, form


def test_segmentation_and_depth_name_what_they_cannot_read(tmp_path, items):
    from svgfeat.data.depth import open_depth_dataset
    from svgfeat.data.segmentation import open_seg_dataset

    write_tars(tmp_path / "tars", items[:4])
    for opener, what in [(open_seg_dataset, "segmentation"), (open_depth_dataset, "depth estimation")]:
        for spec in [tmp_path / "tars", f"{tmp_path}/tars/*.tar", "hf://datasets/ILSVRC/imagenet-1k"]:
            with pytest.raises(DataError, match=f"{what} needs image \\+ annotation folders; .* holds"):
                opener(spec)


def test_eval_data_options_are_checked_in_one_line(tmp_path):
    for args, expect in [([], "pass --root R"), (["--train", "sample:digits/train"], "pass --root R"),
                         (["--root", "sample", "--val", "x"], "exclude each other")]:
        r = cli("eval", "imagenet", *args, "--model", "test_tiny", "--out", tmp_path / "o")
        assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli("extract", "", "-o", tmp_path / "o", "--model", "test_tiny")
    assert r.returncode == 2 and "empty string" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_loader_workers_read_tars_and_parquet_like_the_main_process(tmp_path, items):
    require_extra("pyarrow", "hf")
    write_tars(tmp_path / "tars", items[:12], per_shard=5)
    write_parquet(tmp_path / "pq", items[:12], n_files=2, row_group=3)
    for spec in (tmp_path / "tars", tmp_path / "pq"):
        a = svgfeat.extract(spec, tmp_path / f"{spec.name}_0", **KW)
        b = svgfeat.extract(spec, tmp_path / f"{spec.name}_2", workers=2, **KW)
        assert a.paths == b.paths and len(a) == 12
        for g in a.groups:
            assert np.array_equal(a.read(g), b.read(g)), (spec.name, g)
