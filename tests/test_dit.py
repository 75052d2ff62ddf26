"""SVG DiT: golden parity with the official model, official key layout, weight files."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

import svgfeat
from conftest import GOLDEN
from conftest import needs_golden as _needs_golden
from svgfeat.errors import CheckpointError, ConfigError
from svgfeat.models import dit as dit_mod
from svgfeat.models.build import load_dit
from svgfeat.models.dit import (
    DiTConfig,
    SVGDiT,
    export_official_dit,
    infer_dit_config,
    save_dit,
    sincos_pos_embed_2d,
    svg_dit_b,
    svg_dit_l,
    svg_dit_xl,
)
from svgfeat.models.dit import test_dit_tiny as tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription

needs_golden = _needs_golden("svg_dit_shared.pt")  # under CI=true a missing file fails


@pytest.fixture(scope="module")
def golden_dit():
    return load_dit(GOLDEN / "svg_dit_shared.pt", config=GOLDEN / "svg_dit_shared.yaml")


@pytest.fixture(scope="module")
def golden_ref():
    return np.load(GOLDEN / "svg_dit_shared_ref.npz")


@needs_golden
def test_golden_velocity(golden_dit, golden_ref):
    x, t, y = (torch.from_numpy(golden_ref[k]) for k in ("x", "t", "y"))
    with torch.no_grad():
        full = golden_dit.forward_full(x, t, y)
        vel = golden_dit(x, t, y)
    ref = golden_ref["velocity_full"]
    assert full.shape == (4, 256, 784) and vel.shape == (4, 256, 392)
    assert np.abs(full.numpy() - ref).max() <= 1e-4
    assert np.abs(vel.numpy() - ref[..., :392]).max() <= 1e-4


@needs_golden
def test_golden_config_inferred_equals_yaml(golden_dit):
    inferred = load_dit(GOLDEN / "svg_dit_shared.pt")
    assert inferred.config == golden_dit.config
    assert (inferred.config.hidden_size, inferred.config.depth, inferred.config.num_heads) == (384, 2, 6)
    sha = hashlib.sha256((GOLDEN / "svg_dit_shared.pt").read_bytes()).hexdigest()
    assert inferred.provenance["sha256"] == sha and inferred.provenance["format"] == "official"
    assert not inferred.training


@needs_golden
def test_svg_dit_xl_official_keys_and_param_count():
    ref = json.loads((GOLDEN / "official_key_shapes.json").read_text())["svg_dit_xl"]
    with torch.device("meta"):
        m = svg_dit_xl()
    got = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert got == ref
    assert sum(p.numel() for p in m.parameters()) == 676_437_904 == sum(math.prod(s) for s in ref.values())
    assert not m.pos_embed.requires_grad


def test_variant_sizes():
    with torch.device("meta"):
        b, lg = svg_dit_b(), svg_dit_l()
    nb, nl = (sum(p.numel() for p in m.parameters()) / 1e6 for m in (b, lg))
    assert 125 < nb < 135 and 450 < nl < 465  # paper: 130M / 458M
    assert (b.config.hidden_size, b.config.depth, b.config.num_heads) == (768, 12, 12)
    assert (lg.config.hidden_size, lg.config.depth, lg.config.num_heads) == (1024, 24, 16)


def test_pos_embed_matches_mae_layout():
    pe = sincos_pos_embed_2d(8, 2, 3)  # [6, 8]; first half encodes the column, second half the row
    cols = torch.tensor([0, 1, 2, 0, 1, 2.0])
    rows = torch.tensor([0, 0, 0, 1, 1, 1.0])
    assert torch.allclose(pe[:, 0], torch.sin(cols)) and torch.allclose(pe[:, 2], torch.cos(cols))
    assert torch.allclose(pe[:, 4], torch.sin(rows)) and torch.allclose(pe[:, 6], torch.cos(rows))


def _randomised_tiny(**kw):
    torch.manual_seed(0)
    m = tiny_dit(**kw)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n != "pos_embed":
                p.normal_(0, 0.05)
    return m.eval()


def test_other_grids_recompute_the_table():
    m = _randomised_tiny(in_channels=8)
    x = torch.randn(2, 8 * 12, 8)
    t, y = torch.rand(2), torch.tensor([1, 1000])
    with torch.no_grad():
        out = m(x, t, y, grid=(8, 12))
    assert out.shape == x.shape
    assert torch.equal(m._pos_embed(96, (8, 12), torch.float32, "cpu")[0], sincos_pos_embed_2d(64, 8, 12))
    with torch.no_grad():  # square grids are inferred
        assert m(torch.randn(2, 64, 8), t, y).shape == (2, 64, 8)
    with pytest.raises(ConfigError, match="not a square grid"):
        m(torch.randn(2, 96, 8), t, y)
    with pytest.raises(ConfigError, match="expected tokens"):
        m(torch.randn(2, 96, 7), t, y)


def test_label_dropout_only_in_training():
    m = _randomised_tiny(in_channels=8, class_dropout_prob=0.5)
    x, t, y = torch.randn(3, 16, 8), torch.rand(3), torch.tensor([1, 2, 3])
    with torch.no_grad():
        forced = m(x, t, y, drop_mask=torch.tensor([True, True, True]))
        null = m(x, t, torch.full_like(y, m.num_classes))
        assert torch.allclose(forced, null)
        assert torch.equal(m(x, t, y), m(x, t, y))  # eval: deterministic, no dropout


def test_save_load_roundtrip(tmp_path):
    m = _randomised_tiny(in_channels=16, num_classes=10)
    p = save_dit(m, tmp_path / "d.safetensors")
    side = json.loads(p.with_suffix(".json").read_text())
    assert side["config"]["num_classes"] == 10 and side["kind"] == "dit"
    m2 = load_dit(p)
    assert m2.config == m.config and m2.provenance["format"] == "svgfeat"
    assert m2.provenance["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    x, t, y = torch.randn(2, 256, 16), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(m(x, t, y), m2(x, t, y))


def test_export_official_roundtrip(tmp_path):
    m = _randomised_tiny(in_channels=16, num_classes=10)
    pt, yml = export_official_dit(m, tmp_path / "ckpt.pt")
    raw = torch.load(pt, weights_only=True)
    assert list(raw) == ["ema"]
    m2 = load_dit(pt, config=yml)
    m3 = load_dit(pt)  # inferred from shapes
    assert m2.config == m3.config == m.config
    x, t, y = torch.randn(2, 256, 16), torch.rand(2), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(m(x, t, y), m2(x, t, y))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"ema": {"x": torch.zeros(1)}, "payload": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        load_dit(p)


def test_strict_key_accounting(tmp_path):
    m = tiny_dit(in_channels=8)
    sd = m.state_dict()
    sd.pop("blocks.1.mlp.fc2.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"ema": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_dit(tmp_path / "bad.pt", config=m.config)
    assert "blocks.1.mlp.fc2.bias" in str(e.value) and "extra.weight" in str(e.value)
    wrong = DiTConfig.from_dict({**m.config.to_dict(), "hidden_size": 128})
    torch.save({"model": m.state_dict()}, tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_dit(tmp_path / "ok.pt", config=wrong)
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_dit(tmp_path / "junk.pt")
    (tmp_path / "junk2.pt").write_bytes(b"junk\n")  # trips the unpickler with a KeyError
    with pytest.raises(CheckpointError, match="junk2.pt"):
        load_dit(tmp_path / "junk2.pt")


def test_config_validation():
    with pytest.raises(ConfigError, match="not divisible"):
        SVGDiT(hidden_size=100, num_heads=3)
    with pytest.raises(ConfigError, match="unknown keys"):
        DiTConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="patch_size"):
        DiTConfig.from_dict({"patch_size": 2})
    assert infer_dit_config(tiny_dit(in_channels=8).state_dict()).num_heads == 4


def test_registered_variants():
    from svgfeat.models.build import create_model, list_models

    names = list_models(kind="dit")
    assert {"svg_dit_b", "svg_dit_l", "svg_dit_xl", "test_dit_tiny"} <= set(names)
    assert isinstance(create_model("test_dit_tiny", depth=1), SVGDiT)
    assert svgfeat.load_dit is load_dit and not hasattr(dit_mod, "load_dit")  # the builder loads weights
