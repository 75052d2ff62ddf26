"""Checkpoints whose values the model cannot hold: NaN/Inf or integer weights in an SVG-T2I autoencoder are
refused with one line naming the tensor (they loaded silently before), foreign keys too."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import svgfeat
from conftest import golden_path, golden_t2i
from svgfeat.errors import CheckpointError


def _edit(tmp_path, name: str, edit) -> str:
    sd = torch.load(golden_t2i("svg_autoencoder-R_random.ckpt"), weights_only=True, map_location="cpu")
    inner = dict(sd["state_dict"] if "state_dict" in sd else sd)
    edit(inner)
    p = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": inner}, p)
    return str(p)


def _first(inner, prefix):
    return next(k for k in sorted(inner) if k.startswith(prefix) and inner[k].is_floating_point())


def _nan(prefix):
    def edit(inner):
        k = _first(inner, prefix)
        inner[k] = inner[k].clone()
        inner[k].view(-1)[0] = float("nan")
    return edit


def _int64(inner):
    k = _first(inner, "decoder.")
    inner[k] = inner[k].to(torch.int64)


def _foreign(inner):
    inner["optimizer.step"] = torch.zeros(1)


@pytest.mark.parametrize("name, edit, message", [
    ("nan-decoder", _nan("decoder."), "holding NaN/Inf"),
    ("nan-residual", _nan("extra_vit."), "holding NaN/Inf"),
    ("int64-decoder", _int64, "non-float dtype where the model has floats: conv_in.bias: int64"),
    ("foreign-key", _foreign, "unexpected keys in SVG checkpoint"),
])
def test_unusable_t2i_checkpoints_are_refused(tmp_path, name, edit, message):
    bad = _edit(tmp_path, name, edit)
    dino = str(golden_path("dinov3_vits16plus_random.pth"))
    with pytest.raises(CheckpointError, match=message):
        svgfeat.load_encoder(dinov3=dino, svg=bad)
    r = subprocess.run([sys.executable, "-m", "svgfeat", "extract", "sample:photos", "-o", str(tmp_path / "c"),
                        "--dinov3", dino, "--svg", bad, "--size", "64", "--limit", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()  # refused before anything was written
