"""Dataset specs, decoding of unusual images, preprocessing presets."""

import numpy as np
import pytest
import torch
from PIL import Image

import svgfeat
from svgfeat.data.decode import DecodeError, load_image
from svgfeat.errors import DataError


@pytest.fixture()
def imagenet_tree(tmp_path, photos):
    for split in ("train", "val"):
        for c, wnid in enumerate(["n01440764", "n01443537"]):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for k in range(3):
                Image.fromarray(photos[(c + k) % 4]).save(d / f"{wnid}_{k}.JPEG")
    return tmp_path


def test_class_folders_flat_val_list_and_plain(imagenet_tree, tmp_path):
    tr = svgfeat.open_dataset(imagenet_tree / "train")
    assert tr.classes == ["n01440764", "n01443537"] and list(tr.labels) == [0, 0, 0, 1, 1, 1]
    assert tr.paths[0] == "n01440764/n01440764_0.JPEG" and tr.load(0).mode == "RGB"
    flat = tmp_path / "flatval"
    flat.mkdir()
    lines = []
    for i, p in enumerate(sorted((imagenet_tree / "val").rglob("*.JPEG"))):
        (flat / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(p.read_bytes())
        lines.append(f"ILSVRC2012_val_{i:08d}.JPEG {p.parent.name}")
    (tmp_path / "gt.txt").write_text("\n".join(lines))
    fv = svgfeat.open_dataset(flat, labels=tmp_path / "gt.txt", classes=tr.classes)
    assert list(fv.labels) == [0, 0, 0, 1, 1, 1]
    lst = tmp_path / "list.txt"
    lst.write_text("train/n01443537/n01443537_1.JPEG 1\ntrain/n01440764/n01440764_2.JPEG 0\n")
    fl = svgfeat.open_dataset(lst)
    assert list(fl.labels) == [1, 0] and fl.load(1).mode == "RGB"
    plain = svgfeat.open_dataset(flat)
    assert len(plain) == 6 and (plain.labels == -1).all()
    assert plain.fingerprint() != fv.fingerprint()


def test_sample_specs_and_errors():
    tr, va = svgfeat.open_dataset("sample:digits/train"), svgfeat.open_dataset("sample:digits/val")
    assert len(tr) + len(va) == 1797 and not set(tr.paths) & set(va.paths)
    assert tr.fingerprint() == svgfeat.open_dataset("sample:digits/train").fingerprint()
    assert len(svgfeat.open_dataset("sample:photos")) >= 15
    with pytest.raises(DataError, match="unknown sample dataset"):
        svgfeat.open_dataset("sample:cifar")
    with pytest.raises(DataError, match="not found"):
        svgfeat.open_dataset("/no/such/dir")


def test_decoding_modes_and_exif(tmp_path, photos):
    a = photos[0][:64, :96]
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (64, 96)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(a).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "transparent.png")
    for f in ("cmyk.jpg", "p.png"):
        assert load_image(tmp_path / f).mode == "RGB"
    assert np.asarray(load_image(tmp_path / "transparent.png")).min() == 255  # composited on white
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb)
    with pytest.raises(DecodeError) as e:
        load_image(bomb)
    assert e.value.reason == "decompression-bomb"


def test_presets():
    a = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    for preset, size in (("svg", 256), ("center-crop", 224), ("resize", 64)):
        assert svgfeat.preprocess(a, preset=preset, size=size).shape == (1, 3, size, size)
    assert svgfeat.preprocess(np.zeros((32, 48, 3), np.uint8), preset="none").shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="multiple of 16"):
        svgfeat.preprocess(a, size=100)
    x = svgfeat.preprocess([a, a])
    assert x.dtype == torch.float32 and torch.equal(x[0], x[1])


def test_device_decode_path_and_fast_jpeg(tmp_path, photos):
    for i, p in enumerate(photos):
        Image.fromarray(p).save(tmp_path / f"p{i}.jpg", quality=95)
    Image.fromarray(photos[0]).save(tmp_path / "p9.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    kw = dict(model="test_tiny", size=64, progress=False, groups=["latent"])
    ref = svgfeat.extract(tmp_path, tmp_path.parent / "ref", **kw)
    dev = svgfeat.extract(tmp_path, tmp_path.parent / "dev", gpu_decode=True, **kw)
    fast = svgfeat.extract(tmp_path, tmp_path.parent / "fast", fast_jpeg=True, **kw)
    for c in (dev, fast):
        assert c.paths == ref.paths and [p for p, _ in c.failures] == ["bad.jpg"]
    assert dev.transform["decoder"] == "device" and fast.transform["fast_jpeg"]
    # same images, approximately the same pixels -> close features
    r, d = ref.read("latent").astype(np.float32), dev.read("latent").astype(np.float32)
    assert np.abs(r - d).mean() < 0.25 * np.abs(r).mean()


def _two_images(folder, photos):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photos[0][:64, :64]).save(folder / "a.png")
    Image.fromarray(photos[1][:64, :64]).save(folder / "b.png")


def test_symlink_loops_neither_duplicate_nor_hang(tmp_path, photos):
    import os
    import threading

    imgs = tmp_path / "imgs"
    _two_images(imgs / "sub", photos)
    os.symlink(".", imgs / "self")  # ln -s . imgs/self
    os.symlink("..", imgs / "sub" / "up")  # a second loop through the parent
    os.symlink("sub", imgs / "alias")  # the same real folder under two names: listed once
    found = {}
    t = threading.Thread(target=lambda: found.setdefault("ds", svgfeat.open_dataset(imgs)), daemon=True)
    t.start()
    t.join(30)
    assert "ds" in found, "walking two symlink loops did not finish in 30 s"
    ds = found["ds"]
    assert sorted(ds.paths) == ["sub/a.png", "sub/b.png"] or sorted(ds.paths) == ["alias/a.png", "alias/b.png"]
    # class folders: a loop inside a class folder is walked once too
    os.symlink(".", imgs / "sub" / "again")
    ds = svgfeat.open_dataset(imgs / "sub")
    assert sorted(ds.paths) == ["a.png", "b.png"], ds.paths


def test_undecodable_file_name_is_a_failure_not_an_abort(tmp_path, photos):
    import os

    imgs = tmp_path / "imgs"
    _two_images(imgs, photos)
    raw = os.path.join(os.fsencode(str(imgs)), b"bad\xff\xfe.png")
    try:
        with open(raw, "wb") as f:
            f.write((imgs / "a.png").read_bytes())
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    ds = svgfeat.open_dataset(imgs)
    assert ds.paths == ["a.png", "b.png", "bad\\xff\\xfe.png"] and len(ds.fingerprint()) == 64
    with pytest.raises(DecodeError) as e:
        ds.load(2)
    assert e.value.reason == "undecodable-name"
    c = svgfeat.extract(imgs, tmp_path / "c", model="test_tiny", size=64, progress=False, groups=["pooled"])
    assert len(c) == 2 and [p for p, _ in c.failures] == ["bad\\xff\\xfe.png"]
    assert c.failures[0][1].startswith("undecodable-name")


def test_file_names_with_newlines_cannot_forge_summary_lines(tmp_path, photos, capsys):
    """The extract failure summary prints escaped names: an embedded newline stays on its line."""
    from svgfeat.cli import main

    imgs = tmp_path / "imgs"
    _two_images(imgs, photos)
    forged = "x.png\n  all good: nothing failed\rOK"
    (imgs / f"{forged}.png").write_bytes(b"not an image at all")
    with pytest.raises(SystemExit) as e:
        main(["extract", str(imgs), "-o", str(tmp_path / "c"), "--model", "test_tiny", "--size", "64",
              "--groups", "pooled"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    lines = [ln for ln in err.splitlines() if "x.png" in ln or "all good" in ln]
    assert len(lines) == 1 and "\\n  all good" in lines[0] and "\\rOK" in lines[0], err
    assert not any(ln.startswith("  all good") for ln in err.splitlines())
