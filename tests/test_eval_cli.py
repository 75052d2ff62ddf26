"""`svgfeat eval imagenet`, `svgfeat probe`, `svgfeat knn` on real images and caches."""

import json

import numpy as np
import pytest
from PIL import Image

import svgfeat
from svgfeat.cli import main
from svgfeat.evaluation.imagenet import resolve_datasets
from svgfeat.heads._features import aligned_labels, feature_matrix
from svgfeat.heads.knn import KNNClassifier
from svgfeat.heads.probe import LinearProbe
from svgfeat.models.svg import SVGEncoder

WNIDS = {"n01440764": "astronaut", "n01443537": "coffee", "n01484850": "chelsea"}


def photo_crops(name, n, seed):
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = int(rng.integers(120, 240))
        x, y = int(rng.integers(0, img.width - s)), int(rng.integers(0, img.height - s))
        out.append(img.crop((x, y, x + s, y + s)).resize((48, 48)))
    return out


def make_tree(root, n_train=6, n_val=2, val_classes=None):
    """A tiny ImageNet-style tree: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (real photos)."""
    for i, (wnid, name) in enumerate(WNIDS.items()):
        crops = photo_crops(name, n_train + n_val, seed=i)
        (root / "train" / wnid).mkdir(parents=True)
        for j, im in enumerate(crops[:n_train]):
            im.save(root / "train" / wnid / f"{wnid}_{j}.JPEG", "JPEG")
        if val_classes is None or wnid in val_classes:
            (root / "val" / wnid).mkdir(parents=True)
            for j, im in enumerate(crops[n_train:]):
                im.save(root / "val" / wnid / f"ILSVRC2012_val_{i}{j}.JPEG", "JPEG")
    return root


def run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture
def count_encoder_calls(monkeypatch):
    calls = {"n": 0}
    original = SVGEncoder.encode

    def counting(self, *a, **kw):
        calls["n"] += 1
        return original(self, *a, **kw)

    monkeypatch.setattr(SVGEncoder, "encode", counting)
    return calls


def test_eval_imagenet_folder_layout_and_cache_reuse(tmp_path, count_encoder_calls):
    # val lacks one class on purpose: labels must be aligned by wnid, not by folder index
    root = make_tree(tmp_path / "imagenet", val_classes=["n01443537", "n01484850"])
    out = tmp_path / "run"
    argv = ["eval", "imagenet", "--root", str(root), "--model", "test_tiny", "--size", "32", "--out", str(out),
            "--min-iterations", "40", "-k", "3,5"]
    assert run(argv) == 0
    assert count_encoder_calls["n"] > 0
    res = json.loads((out / "results.json").read_text())
    assert res["selection"] == "heldout" and len(res["heads"]) == 13
    assert set(res["best"]) >= {"top1", "top5", "head"} and 0 <= res["best"]["top1"] <= 100
    assert set(res["features"]) == {"cls+pooled", "latent"}
    assert res["train"]["rows"] == 18 and res["val"]["rows"] == 4 and res["train"]["classes"] == 3
    assert set(res["features"]["latent"]["knn"]["k"]) == {"3", "5"}
    assert all("val_top1" in h and "heldout_top1" in h for h in res["heads"])
    md = (out / "results.md").read_text()
    assert "| `cls+pooled` |" in md and "lr=0.1" in md
    png = Image.open(out / "lr_curve.png")
    assert png.format == "PNG" and png.size == (900, 560)
    assert (out / "cache" / "train" / "manifest.json").exists() and (out / "cache" / "val" / "manifest.json").exists()
    manifest = (out / "cache" / "train" / "manifest.json").read_text()

    # estimators fed caches directly match val labels to train classes by name (val lacks n01440764)
    tr, va = svgfeat.open_cache(out / "cache" / "train"), svgfeat.open_cache(out / "cache" / "val")
    assert va.labels.tolist() == [0, 0, 1, 1] and aligned_labels(tr, va).tolist() == [1, 1, 2, 2]
    p = LinearProbe(lrs=[0.1], iterations=20, min_iterations=0).fit(tr)
    X = feature_matrix(va).X
    assert p.evaluate(va)["top1"] == p.evaluate(X, [1, 1, 2, 2])["top1"]
    k = KNNClassifier(k=3).fit(tr)
    assert k.evaluate(va)["k"] == k.evaluate(X, [1, 1, 2, 2])["k"]

    # second run: the matching caches are reused, the encoder never runs
    count_encoder_calls["n"] = 0
    assert run(argv) == 0
    assert count_encoder_calls["n"] == 0
    assert (out / "cache" / "train" / "manifest.json").read_text() == manifest
    assert json.loads((out / "results.json").read_text())["best"] == res["best"]


def test_probe_and_knn_commands(tmp_path):
    kw = dict(model="test_tiny", size=32, batch_size=128, progress=False, limit=200)
    tr = svgfeat.extract("sample:digits/train", tmp_path / "tr", **kw)
    va = svgfeat.extract("sample:digits/val", tmp_path / "va", **kw)
    out = tmp_path / "probe.json"
    assert run(["probe", "--train", str(tr.root), "--val", str(va.root), "--min-iterations", "50",
                "--standardize", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["selection"] == "heldout" and len(res["heads"]) == 13 and res["best"]["split"] == "val"
    assert {"top1", "top5", "head"} <= set(res["best"])
    assert run(["probe", "--train", str(tr.root), "--val", str(va.root), "--features", "latent", "--lrs", "0.01,0.1",
                "--wd", "0,1e-4", "--select-on", "val", "--optimizer", "adamw", "--min-iterations", "20",
                "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["selection"] == "val" and "ON VAL" in res["note"] and len(res["heads"]) == 4
    kout = tmp_path / "knn.json"
    assert run(["knn", "--train", str(tr.root), "--val", str(va.root), "-k", "5,10", "-o", str(kout)]) == 0
    k = json.loads(kout.read_text())
    assert set(k["k"]) == {"5", "10"} and k["n_query"] == 200 and k["temperature"] == 0.07


def test_eval_errors(tmp_path, capsys):
    assert run(["eval", "imagenet", "--root", str(tmp_path / "missing"), "--model", "test_tiny",
                "--out", str(tmp_path / "o")]) == 2
    assert "Error:" in capsys.readouterr().err
    make_tree(tmp_path / "r")
    assert run(["eval", "imagenet", "--root", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 2
    assert "--dinov3" in capsys.readouterr().err
    assert run(["probe", "--train", str(tmp_path), "--lrs", "a,b", "-o", str(tmp_path / "x.json")]) == 2


def test_flat_val_with_label_file(tmp_path):
    root = make_tree(tmp_path / "in", n_val=0, val_classes=[])
    (root / "val").mkdir()
    lines = []
    for i, wnid in enumerate(sorted(WNIDS)):
        photo_crops(WNIDS[wnid], 1, seed=9)[0].save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
        lines.append(f"ILSVRC2012_val_{i:08d}.JPEG {wnid}")
    with pytest.raises(svgfeat.errors.DataError, match="--val-labels"):
        resolve_datasets(root)
    (tmp_path / "val_labels.txt").write_text("\n".join(lines))
    tr, va = resolve_datasets(root, tmp_path / "val_labels.txt")
    assert va.labels.tolist() == [0, 1, 2] and va.classes == tr.classes == sorted(WNIDS)
    assert resolve_datasets("sample") == ("sample:digits/train", "sample:digits/val")


def test_sample_root_without_weights_uses_the_seeded_full_model(tmp_path, capsys):
    """The quick start: no weights -> the full SVG-S+ architecture from a fixed seed, said to be random."""
    out = tmp_path / "s"
    assert run(["eval", "imagenet", "--root", "sample", "--size", "32", "--limit", "120", "--out", str(out),
                "--features", "latent", "--min-iterations", "30", "--lrs", "0.01,0.1", "-k", "5"]) == 0
    text = capsys.readouterr().out
    assert "weights are RANDOM (random_svg_vits16plus" in text and "--pretrained" in text
    res = json.loads((out / "results.json").read_text())
    assert res["encoder"]["model"] == "random_svg_vits16plus" and res["train"]["data"] == "sample:digits/train"
    assert res["weights"] == "random" and "only show that the pipeline works" in res["notice"]
    assert "weights are RANDOM" in (out / "results.md").read_text().splitlines()[2]
    assert res["primary_features"] == "latent" and len(res["heads"]) == 2
