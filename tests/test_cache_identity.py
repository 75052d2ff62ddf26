"""Cache identity: a cache is reused only when the whole request matches (encoder name, family, every
weight sha256, transform, precision, groups, views, source and limit); anything else is refused with the
difference named, and ``--overwrite`` rebuilds. The released ("--pretrained") encoder comes from an offline
Hugging Face cache built from the golden weights (tests/_hub_helpers.py)."""

import json

import pytest
from _hub_helpers import build_golden_hub

import svgfeat
from svgfeat.cli import main
from svgfeat.errors import CacheError
from svgfeat.models.svg import SVGEncoder

DATA = "sample:digits/val"
TINY = dict(model="test_tiny", size=32, limit=6, shard_size=4, progress=False)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, golden):
    home = tmp_path_factory.mktemp("hf_home")
    return home, build_golden_hub(home, golden, dit=False)


@pytest.fixture
def offline_hub(hub, monkeypatch):
    from huggingface_hub import constants

    home, src = hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return src


@pytest.fixture
def encoder_calls(monkeypatch):
    calls = {"n": 0}
    original = SVGEncoder.encode

    def counting(self, *a, **kw):
        calls["n"] += 1
        return original(self, *a, **kw)

    monkeypatch.setattr(SVGEncoder, "encode", counting)
    return calls


def run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_pretrained_extract_after_test_tiny_is_refused_not_reused(tmp_path, offline_hub, capsys):
    out = tmp_path / "c"
    base = ["extract", DATA, "-o", str(out), "--size", "32", "--limit", "6", "--shard-size", "4"]
    assert run(base + ["--model", "test_tiny"]) == 0
    tiny_manifest = (out / "manifest.json").read_text()
    capsys.readouterr()
    assert run(base + ["--pretrained"]) == 2
    err = one_line_error(capsys)
    assert "different extraction" in err and "encoder.model" in err and "test_tiny" in err, err
    assert "dinov3_sha256" in err and "--overwrite" in err, err
    assert (out / "manifest.json").read_text() == tiny_manifest  # nothing replaced
    assert run(base + ["--pretrained", "--overwrite"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["encoder"]["model"] != "test_tiny" and m["encoder"]["dinov3_sha256"]
    assert m["encoder"]["family"] == "svg" and m["weights"]["svg_config_sha256"]


def test_default_command_without_weights_never_reuses_a_test_tiny_cache(tmp_path, capsys):
    out = tmp_path / "c"
    base = ["extract", DATA, "-o", str(out), "--size", "32", "--limit", "6"]
    assert run(base + ["--model", "test_tiny"]) == 0
    capsys.readouterr()
    assert run(base) == 2  # the default encoder needs weights: said so, the test_tiny cache is not returned
    err = one_line_error(capsys)
    assert "DINOv3 weights are needed" in err, err


def test_weights_by_path_after_pretrained_reuse_without_running_the_encoder(tmp_path, offline_hub, encoder_calls):
    out = tmp_path / "c"
    a = svgfeat.extract(DATA, out, dinov3="hf", svg="hf", svg_config="hf", size=32, limit=4, progress=False)
    assert encoder_calls["n"] > 0
    encoder_calls["n"] = 0
    # the same files given by path: the same identity (sha256), reused without building anything
    b = svgfeat.extract(DATA, out, dinov3=offline_hub["dinov3"], svg=offline_hub["svg"],
                        svg_config=offline_hub["svg_config"], size=32, limit=4, progress=False)
    assert encoder_calls["n"] == 0 and b.manifest == a.manifest
    # one weight file fewer (DINOv3 only): another encoder, refused with the difference named
    with pytest.raises(CacheError, match=r"different extraction.*svg_sha256"):
        svgfeat.extract(DATA, out, dinov3=offline_hub["dinov3"], size=32, limit=4, progress=False)


def test_another_svg_checkpoint_with_the_same_architecture_is_refused(tmp_path, offline_hub):
    import torch

    out = tmp_path / "c"
    svgfeat.extract(DATA, out, dinov3=offline_hub["dinov3"], svg=offline_hub["svg"],
                    svg_config=offline_hub["svg_config"], size=32, limit=4, progress=False)
    ck = torch.load(offline_hub["svg"], map_location="cpu", weights_only=True)
    sd = ck.get("state_dict", ck)
    k = next(k for k in sd if k.startswith("decoder.") and sd[k].is_floating_point())
    sd[k] = sd[k] + 1  # a retrained decoder: same shapes, other weights
    other = tmp_path / "other.ckpt"
    torch.save(ck, other)
    with pytest.raises(CacheError, match=r"different extraction.*svg_sha256"):
        svgfeat.extract(DATA, out, dinov3=offline_hub["dinov3"], svg=other, svg_config=offline_hub["svg_config"],
                        size=32, limit=4, progress=False)


@pytest.mark.parametrize("change, named", [
    ({"size": 48}, "transform.size"),
    ({"preset": "resize"}, "transform.preset"),
    ({"precision": "bf16"}, "precision"),
    ({"groups": "latent,cls"}, "groups"),
    ({"views": 2}, "views"),
    ({"limit": 5}, "dataset_fingerprint"),
    ({"dtype": "fp32"}, "dtype"),
    ({"model": "test_tiny_dino"}, "encoder.model"),
])
def test_every_request_field_is_compared_and_named(tmp_path, change, named, encoder_calls):
    out = tmp_path / "c"
    svgfeat.extract(DATA, out, **TINY)
    before = (out / "manifest.json").read_text()
    with pytest.raises(CacheError, match="different extraction") as e:
        svgfeat.extract(DATA, out, **{**TINY, **change})
    assert named in str(e.value) and "--overwrite" in str(e.value)
    assert (out / "manifest.json").read_text() == before
    encoder_calls["n"] = 0
    c = svgfeat.extract(DATA, out, **{**TINY, **change}, overwrite=True)
    assert encoder_calls["n"] > 0 and len(c) > 0


def test_eval_imagenet_pretrained_after_test_tiny_refuses_then_overwrite_rebuilds(tmp_path, offline_hub, capsys):
    out = tmp_path / "run"
    base = ["eval", "imagenet", "--root", "sample", "--out", str(out), "--size", "32", "--limit", "12",
            "--no-knn", "--features", "cls", "--min-iterations", "5", "--iterations", "5"]
    assert run(base + ["--model", "test_tiny"]) == 0
    tiny = json.loads((out / "results.json").read_text())
    assert tiny["encoder"]["model"] == "test_tiny"
    capsys.readouterr()
    assert run(base + ["--pretrained"]) == 2  # was: test_tiny's accuracies reported as the released encoder's
    err = one_line_error(capsys)
    assert "different extraction" in err and "test_tiny" in err and "--overwrite" in err, err
    assert json.loads((out / "results.json").read_text()) == tiny
    assert run(base + ["--pretrained", "--overwrite"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["encoder"]["model"] != "test_tiny" and res["encoder"]["dinov3_sha256"]
