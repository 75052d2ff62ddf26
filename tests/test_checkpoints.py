"""Checkpoint loading: safety, clear errors, official-layout export, svgfeat format round trip."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

import svgfeat
from conftest import golden_path
from svgfeat.errors import CheckpointError
from svgfeat.models.loading import export_official, official_state_dict, save_encoder


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/svgfeat_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "x": _Evil()}, p)
    if os.path.exists("/tmp/svgfeat_pwned"):
        os.remove("/tmp/svgfeat_pwned")
    with pytest.raises(CheckpointError, match="refused to load"):
        svgfeat.load_encoder(dinov3=p)
    assert not os.path.exists("/tmp/svgfeat_pwned")
    # a raw (non-zip) pickle is refused the same way
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps({"a": _Evil()}))
    with pytest.raises(CheckpointError, match="refused|corrupt"):
        svgfeat.load_encoder(dinov3=raw)
    assert not os.path.exists("/tmp/svgfeat_pwned")


def test_truncated_file_is_a_clear_error(tmp_path):
    src = golden_path("dinov3_vits16plus_random.pth").read_bytes()
    p = tmp_path / "trunc.pth"
    p.write_bytes(src[: len(src) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        svgfeat.load_encoder(dinov3=p)
    e = tmp_path / "empty.pth"
    e.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        svgfeat.load_encoder(dinov3=e)


def test_wrong_architecture_and_missing_keys(tmp_path):
    sd = torch.load(golden_path("dinov3_vits16plus_random.pth"), weights_only=True)
    missing = dict(sd)
    del missing["blocks.3.attn.proj.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): blocks.3.attn.proj.weight"):
        svgfeat.load_encoder(dinov3=tmp_path / "missing.pth")
    # the SVG checkpoint is not a DINOv3 file
    with pytest.raises(CheckpointError, match="not a DINOv3 state dict"):
        svgfeat.load_encoder(dinov3=golden_path("svg_ae_shared.ckpt"))
    # an SVG checkpoint whose decoder does not fit the YAML
    with pytest.raises(CheckpointError, match="shape mismatch"):
        svgfeat.load_encoder(dinov3=golden_path("dinov3_vits16plus_random.pth"), svg=golden_path("svg_ae_shared.ckpt"),
                             model="svg_vits16plus")
    # unknown extra keys in an SVG checkpoint are listed
    ck = torch.load(golden_path("svg_ae_shared.ckpt"), weights_only=True)
    ck["state_dict"]["bogus.weight"] = torch.zeros(1)
    torch.save(ck, tmp_path / "bogus.ckpt")
    with pytest.raises(CheckpointError, match="bogus.weight"):
        svgfeat.load_encoder(dinov3=golden_path("dinov3_vits16plus_random.pth"), svg=tmp_path / "bogus.ckpt")


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    p = tmp_path / "trunc.pth"
    p.write_bytes(golden_path("dinov3_vits16plus_random.pth").read_bytes()[:1000])
    r = subprocess.run([sys.executable, "-m", "svgfeat", "encode", "sample:photos", "-o", str(tmp_path / "o.safetensors"),
                        "--dinov3", str(p)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("Error:") and "trunc.pth" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_default_model_exports_the_official_keys_and_shapes():
    ref = json.loads(golden_path("official_key_shapes.json").read_text())["svg_autoencoder_full"]
    with torch.device("meta"):
        enc = svgfeat.create_model("svg_vits16plus")
    sd = official_state_dict(enc)
    got = {k: list(v.shape) for k, v in sd.items()}
    assert set(got) == set(ref), (set(got) ^ set(ref))
    assert got == ref


def test_official_export_round_trip(tmp_path, golden_encoder, photos):
    ck, yml = export_official(golden_encoder, tmp_path / "svg.ckpt")
    again = svgfeat.load_encoder(svg=ck, svg_config=yml)  # encoder.* embedded: no dinov3 needed
    x = svgfeat.preprocess(photos[:2], size=64)
    a, b = golden_encoder.encode(x), again.encode(x)
    assert torch.equal(a.latent, b.latent) and torch.equal(a.cls, b.cls)


def test_svgfeat_format_round_trip_with_fixed_stats(tmp_path, photos):
    enc = svgfeat.create_model("test_tiny")
    enc.set_alignment("fixed", dict(mu_dino=0.1, sigma_dino=0.9, mu_res=-0.2, sigma_res=1.5))
    p = save_encoder(enc, tmp_path / "tiny.safetensors", include_backbone=True)
    assert (tmp_path / "tiny.json").exists()
    again = svgfeat.load_encoder(svg=p, alignment="fixed")
    x = svgfeat.preprocess(photos, size=64)
    assert torch.equal(enc.encode(x).latent, again.encode(x).latent)
    assert again.align.fixed_stats_dict()["sigma_res"] == 1.5


def test_timm_safetensors_layout_loads_identically(tmp_path, photos):
    from safetensors.torch import save_file

    meta = svgfeat.load_encoder(dinov3=golden_path("dinov3_vits16plus_random.pth"))
    save_file({k: v.contiguous() for k, v in meta.backbone.model.state_dict().items()}, tmp_path / "d.safetensors")
    timm_layout = svgfeat.load_encoder(dinov3=tmp_path / "d.safetensors")
    x = svgfeat.preprocess(photos[:1], size=64)
    assert torch.equal(meta.encode(x).dino, timm_layout.encode(x).dino)


def test_hf_source_offline_is_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "svgfeat", "encode", "sample:photos", "-o", str(tmp_path / "o.st"),
                        "--dinov3", "hf"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Hugging Face" in r.stderr and "Traceback" not in r.stderr
