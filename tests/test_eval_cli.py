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
    assert res["numerics"]["precision"] == "fp32" and res["numerics"]["device_type"] == "cpu"  # how features were made
    assert res["head_numerics"]["precision"] == "fp32" and res["knn"]["numerics"]["device_type"] == "cpu"  # the heads'
    assert set(res["best"]) >= {"top1", "top5", "head"} and 0 <= res["best"]["top1"] <= 100
    assert set(res["features"]) == {"cls+pooled", "latent"}
    assert res["train"]["rows"] == 18 and res["val"]["rows"] == 4 and res["train"]["classes"] == 3
    assert res["protocol"] == "svgfeat" and res["normalize"] == "zscore"
    assert res["knn"]["features"] == "cls" and set(res["knn"]["k"]) == {"3", "5"}  # kNN on its own features
    assert res["knn"]["train_cache"] == str(out / "cache" / "train")  # one deterministic view: same cache
    assert {d["setting"] for d in res["deviations"]} >= {"train_size", "val_size", "knn_k", "weights"}
    assert all("val_top1" in h and "heldout_top1" in h for h in res["heads"])
    md = (out / "results.md").read_text()
    assert "| `cls+pooled` |" in md and "lr=0.1" in md and "Protocol: `svgfeat`" in md
    assert "`knn_k`: protocol [10, 20, 100, 200], used [3, 5]" in md
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
    k = KNNClassifier(k=3).fit(tr)  # CLS features by default
    assert k.evaluate(va)["k"] == k.evaluate(feature_matrix(va, features="cls").X, [1, 1, 2, 2])["k"]
    assert k.score(va) == k.evaluate(va)["k"]["3"]["top1"] / 100  # the shared score() aligns cache labels

    # second run: the matching caches are reused, the encoder never runs
    count_encoder_calls["n"] = 0
    assert run(argv) == 0
    assert count_encoder_calls["n"] == 0
    assert (out / "cache" / "train" / "manifest.json").read_text() == manifest
    assert json.loads((out / "results.json").read_text())["best"] == res["best"]

    # --precision bf16: the fp32 caches are not reused (refused, one line); --overwrite rebuilds them in bf16
    assert run(argv + ["--precision", "bf16"]) == 2
    assert (out / "cache" / "train" / "manifest.json").read_text() == manifest
    assert run(argv + ["--precision", "bf16", "--overwrite"]) == 0
    res16 = json.loads((out / "results.json").read_text())
    assert res16["numerics"]["precision"] == "bf16" and res16["numerics"]["autocast_dtype"] == "bfloat16"
    assert res16["head_numerics"]["precision"] == "fp32"  # the probe and kNN themselves run in fp32


def test_probe_and_knn_commands(tmp_path):
    kw = dict(model="test_tiny", size=32, batch_size=128, progress=False, limit=200)
    tr = svgfeat.extract("sample:digits/train", tmp_path / "tr", **kw)
    va = svgfeat.extract("sample:digits/val", tmp_path / "va", **kw)
    out = tmp_path / "probe.json"
    assert run(["probe", "--train", str(tr.root), "--val", str(va.root), "--min-iterations", "50",
                "--normalize", "batchnorm", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["selection"] == "heldout" and len(res["heads"]) == 13 and res["best"]["split"] == "val"
    assert res["normalize"] == "batchnorm" and "MAE" in res["normalize_note"]
    assert {"top1", "top5", "head"} <= set(res["best"])
    assert run(["probe", "--train", str(tr.root), "--val", str(va.root), "--features", "latent", "--lrs", "0.01,0.1",
                "--wd", "0,1e-4", "--select-on", "val", "--optimizer", "adamw", "--min-iterations", "20",
                "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["selection"] == "val" and "ON VAL" in res["note"] and len(res["heads"]) == 4
    assert res["normalize"] == "zscore"  # the stated default
    kout = tmp_path / "knn.json"
    assert run(["knn", "--train", str(tr.root), "--val", str(va.root), "-k", "5,10", "-o", str(kout)]) == 0
    k = json.loads(kout.read_text())
    assert set(k["k"]) == {"5", "10"} and k["n_query"] == 200 and k["temperature"] == 0.07
    assert k["features"] == "cls"  # DINO's kNN protocol: the CLS token by default


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
    timings = [ln for ln in text.splitlines() if ln.startswith("stage timings: ")]
    assert len(timings) == 1 and all(s in timings[0] for s in ("extract_train", "probe[latent]", "knn[cls]", "report"))
    res = json.loads((out / "results.json").read_text())
    assert res["encoder"]["model"] == "random_svg_vits16plus" and res["train"]["data"] == "sample:digits/train"
    assert res["weights"] == "random" and "only show that the pipeline works" in res["notice"]
    assert "weights are RANDOM" in (out / "results.md").read_text().splitlines()[2]
    assert res["primary_features"] == "latent" and len(res["heads"]) == 2


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_dinov3_protocol_on_full_size_encoder(tmp_path, golden):
    """`eval imagenet --protocol dinov3` end to end with the full-size SVG encoder (golden random weights):
    random-resized-crop train views, resize -> centre-crop val, kNN on CLS through the eval transform,
    selection on val labelled, every deviation listed."""
    out = tmp_path / "d3"
    w = ["--dinov3", str(golden("dinov3_vits16plus_random.pth")), "--svg", str(golden("svg_ae_shared.ckpt")),
         "--svg-config", str(golden("svg_ae_shared.yaml"))]
    argv = ["eval", "imagenet", "--root", "sample", "--protocol", "dinov3", *w, "--size", "32", "--limit", "24",
            "--train-views", "2", "--iterations", "20", "--lrs", "0.01,0.1", "--out", str(out)]
    assert run(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "dinov3" and res["knn"]["features"] == "cls"
    assert sorted(res["knn"]["k"], key=int) == ["10", "20", "24"]  # protocol ks, 100/200 clipped to 24 neighbours
    assert res["selection"] == "val" and "ON VAL" in res["note"] and res["normalize"] == "none"
    assert res["settings"]["lrs"] == [0.01, 0.1] and res["protocol_settings"]["iterations"] == 12500
    devs = {d["setting"]: d for d in res["deviations"]}
    assert devs["train_views"]["protocol"] == 10 and devs["train_views"]["used"] == 2
    assert devs["iterations"]["used"] == 20 and devs["train_size"]["protocol"] == 224
    assert {"data", "limit", "lrs", "knn_k_used"} <= set(devs) and "weights" not in devs and "knn_k" not in devs
    assert devs["knn_k_used"]["used"] == [10, 20, 24]
    assert res["inherent"] and "fresh random-resized crop" in res["inherent"][0]
    md = (out / "results.md").read_text()
    assert "Protocol: `dinov3`" in md and "`train_views`: protocol 10, used 2" in md and "kNN on `cls`" in md
    # the caches record the protocol, the crops and the views
    tr, va, te = (_manifest(out / "cache" / d) for d in ("train", "val", "train_eval"))
    assert tr["protocol"] == va["protocol"] == te["protocol"] == "dinov3"
    assert tr["transform"]["preset"] == "rrc" and tr["transform"]["scale"] == [0.08, 1.0] and tr["views"] == 2
    assert va["transform"]["preset"] == "center-crop" and va["transform"]["crop_pct"] == 0.875 and va["views"] == 1
    assert te["transform"] == va["transform"] and res["knn"]["train_cache"] == str(out / "cache" / "train_eval")
    assert res["train"]["transform"]["preset"] == "rrc" and res["train"]["views"] == 2
    # the K views are distinct crops and the extraction is exact on a rerun (seeded per item and view)
    c = svgfeat.open_cache(out / "cache" / "train")
    cls = c.read("cls").astype(np.float32)
    assert not np.array_equal(cls[0], cls[1]) and c.view_ids[:2].tolist() == [0, 1]
    again = svgfeat.extract("sample:digits/train", tmp_path / "again", dinov3=w[1], svg=w[3], svg_config=w[5],
                            preset="rrc", size=32, views=2, limit=4, groups=("cls",), progress=False)
    np.testing.assert_array_equal(again.read("cls"), c.read("cls", np.arange(8)))


def test_svg_protocol_states_what_is_unknown(tmp_path):
    out = tmp_path / "svg"
    assert run(["eval", "imagenet", "--root", "sample", "--protocol", "svg", "--model", "test_tiny", "--size", "32",
                "--limit", "30", "--train-views", "1", "--iterations", "10", "--lrs", "0.1", "-k", "5",
                "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "svg" and res["primary_features"] == "latent" and res["knn"]["features"] == "latent"
    assert any("features" in u for u in res["unknown"]) and any("resolution" in u for u in res["unknown"])
    assert res["reference_numbers"]["SVG top-1/top-5"] == [81.8, 95.87]
    assert "Not documented by the protocol's source" in (out / "results.md").read_text()


def test_protocol_overrides_are_deviations():
    from svgfeat.evaluation.protocols import PROTOCOLS, resolve

    p, used, devs = resolve("dinov3", train_views=None, lrs=[1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3,
                                                            1e-2, 2e-2, 5e-2, 1e-1], normalize="zscore")
    assert used["train_views"] == 10 and [d["setting"] for d in devs] == ["normalize"]  # equal lists are no deviation
    assert PROTOCOLS["dinov3"].settings["val_preset"] == "center-crop" and PROTOCOLS["svgfeat"].settings["select_on"] == "heldout"
    with pytest.raises(svgfeat.errors.ConfigError, match="unknown protocol"):
        resolve("dinov2")
    assert run(["eval", "imagenet", "--root", "sample", "--protocol", "dinov2", "--out", "x"]) == 2


def test_rrc224_and_resize256_crop224_presets():
    import skimage.data

    from svgfeat.data.transforms import NAMED, Transform
    from svgfeat.data.views import make_view

    img = Image.fromarray(skimage.data.astronaut())  # 512 x 512
    ev = NAMED["resize256_crop224"]
    assert (ev.preset, ev.size) == ("center-crop", 224)
    ref = img.resize((256, 256), Image.BICUBIC).crop((16, 16, 240, 240))  # DINOv3 eval: resize 256, centre 224
    np.testing.assert_array_equal(np.asarray(ev.to_pil(img)), np.asarray(ref))
    rrc = NAMED["rrc224"]
    a, b, c = (make_view(img, rrc, v, seed, item) for v, seed, item in ((0, 0, 3), (0, 0, 3), (1, 0, 3)))
    assert a.shape == (3, 224, 224) and torch_equal(a, b) and not torch_equal(a, c)
    assert not torch_equal(a, make_view(img, rrc, 0, 1, 3)) and not torch_equal(a, make_view(img, rrc, 0, 0, 4))
    with pytest.raises(TypeError, match="make_view"):
        rrc(img)  # random: only through seeded views
    assert Transform("svg", 256).spec() == {"preset": "svg", "size": 256, "crop_pct": 0.875, "hflip": False,
                                            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def torch_equal(a, b):
    return bool((a == b).all())


def test_tiny_data_scales_the_protocol_step_counts():
    """12,500 DINOv3 steps are 10 ImageNet epochs: on tiny data they scale with the images (at least 100), recorded
    as deviations; what the user set and data of 20,000+ images keep the protocol's counts."""
    from svgfeat.evaluation.protocols import scale_steps_to_data

    st = {"iterations": 12500, "min_iterations": 0}
    devs = scale_steps_to_data(st, 200)
    assert st["iterations"] == 100 and len(devs) == 1 and devs[0]["protocol"] == 12500 and devs[0]["used"] == 100
    assert "tiny" in devs[0]["note"]
    st = {"iterations": 12500, "min_iterations": 0}
    assert scale_steps_to_data(st, 15_000)[0]["used"] == 147 == st["iterations"]  # ceil(12500 * 15000 / 1281167)
    st = {"iterations": None, "min_iterations": 1000}
    assert scale_steps_to_data(st, 1438)[0]["setting"] == "min_iterations" and st["min_iterations"] == 100
    st = {"iterations": 12500, "min_iterations": 0}
    assert scale_steps_to_data(st, 20_000) == [] and st["iterations"] == 12500
    assert scale_steps_to_data(st, 200, given={"iterations"}) == [] and st["iterations"] == 12500


def test_tiny_data_caps_the_protocol_train_views():
    from svgfeat.evaluation.protocols import scale_views_to_data

    st = {"train_views": 10}
    devs = scale_views_to_data(st, 200)
    assert st["train_views"] == 2 and devs[0]["protocol"] == 10 and devs[0]["used"] == 2 and "tiny" in devs[0]["note"]
    for images, given in ((20_000, ()), (200, {"train_views"})):
        st = {"train_views": 10}
        assert scale_views_to_data(st, images, given) == [] and st["train_views"] == 10
    st = {"train_views": 1}
    assert scale_views_to_data(st, 200) == [] and st["train_views"] == 1
