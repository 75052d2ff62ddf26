"""Core CLI commands: version, doctor, encode, reconstruct, export, extract on the sample, stats."""

import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import svgfeat
from conftest import golden_path


def run(*args):
    return subprocess.run([sys.executable, "-m", "svgfeat", *map(str, args)], capture_output=True, text=True)


def test_version_and_doctor():
    r = run("--version")
    assert r.returncode == 0 and svgfeat.__version__ in r.stdout
    r = run("doctor")
    assert r.returncode == 0
    for word in ("torch", "timm", "faiss", "mmseg", "SVGFEAT_DINOV3", "test_tiny"):
        assert word in r.stdout


def test_encode_and_reconstruct_with_golden_weights(tmp_path, photos):
    d, s, y = (golden_path(n) for n in ("dinov3_vits16plus_random.pth", "svg_ae_shared.ckpt", "svg_ae_shared.yaml"))
    img = tmp_path / "astronaut.png"
    Image.fromarray(photos[0]).save(img)
    r = run("encode", img, "-o", tmp_path / "f.safetensors", "--dinov3", d, "--svg", s, "--svg-config", y,
            "--size", "64", "--groups", "latent,registers")
    assert r.returncode == 0, r.stderr
    t = load_file(tmp_path / "f.safetensors")
    assert t["latent"].shape == (1, 392, 4, 4) and t["registers"].shape == (1, 4, 384)
    enc = svgfeat.load_encoder(dinov3=d, svg=s, svg_config=y)
    ref = enc.encode(svgfeat.preprocess(img, size=64)).latent
    assert torch.allclose(t["latent"], ref, atol=1e-5)
    from svgfeat.checkpoints import read_safetensors_config
    from svgfeat.picture_files import image_meta

    assert read_safetensors_config(tmp_path / "f.safetensors")["numerics"]["precision"] == "fp32"
    r = run("reconstruct", img, "-o", tmp_path / "r.png", "--dinov3", d, "--svg", s, "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and Image.open(tmp_path / "r.png").size == (128, 64)
    assert image_meta(tmp_path / "r.png")["numerics"]["device_type"] == "cpu"


def test_extract_stats_info_on_sample(tmp_path):
    r = run("extract", "sample:digits/val", "-o", tmp_path / "c", "--model", "test_tiny", "--size", "64",
            "--limit", "40", "--groups", "latent,pooled")
    assert r.returncode == 0, r.stderr
    r = run("stats", tmp_path / "c", "--write-official", tmp_path / "s.pt")
    assert r.returncode == 0, r.stderr
    st = torch.load(tmp_path / "s.pt", weights_only=True)
    lat = svgfeat.open_cache(tmp_path / "c").read("latent").astype(np.float64)
    assert np.allclose(st["dinov3_sp_mean"].reshape(-1).numpy(), lat.mean(axis=(0, 2, 3)), atol=1e-5)


def test_export_official_cli(tmp_path):
    d, s = golden_path("dinov3_vits16plus_random.pth"), golden_path("svg_ae_shared.ckpt")
    r = run("export", "--dinov3", d, "--svg", s, "-o", tmp_path / "e.ckpt")
    assert r.returncode == 0, r.stderr
    sd = torch.load(tmp_path / "e.ckpt", weights_only=True)["state_dict"]
    assert "encoder.storage_tokens" in sd and "extra_vit.heads.2.weight" in sd and "decoder.conv_out.weight" in sd
    r = run("export", "--dinov3", d, "--svg", s, "-o", tmp_path / "e.safetensors", "--format", "svgfeat")
    assert r.returncode == 0, r.stderr
    a = svgfeat.load_encoder(dinov3=d, svg=tmp_path / "e.safetensors")
    assert a.latent_channels == 392


def test_missing_weights_message():
    r = run("encode", "sample:photos", "-o", "/tmp/x.safetensors")
    assert r.returncode == 2 and "DINOv3 weights are needed" in r.stderr and "Traceback" not in r.stderr
