"""Samplers: golden parity with the official RectifiedFlow.sample, analytic fields, CFG schedules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import GOLDEN, golden_path, has_golden, needs_golden
from svgfeat.errors import ConfigError
from svgfeat.generation.flow import flow_matching_loss, shift_t
from svgfeat.generation.sampling import METHODS, guidance_at, parse_cfg_mode, sample, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription

HAVE_GOLDEN = has_golden("svg_dit_shared_ref.json")
RUNS = json.loads((GOLDEN / "svg_dit_shared_ref.json").read_text())["runs"] if HAVE_GOLDEN else {}


@pytest.fixture(scope="module")
def golden():
    from svgfeat.models.build import load_dit

    return load_dit(golden_path("svg_dit_shared.pt")), np.load(golden_path("svg_dit_shared_ref.npz"))


@needs_golden("svg_dit_shared_ref.json")  # under CI=true: runs, and golden_path fails on a missing file
@pytest.mark.parametrize("name", sorted(RUNS) or ["none"])
def test_golden_sampler_runs(golden, name):
    model, ref = golden
    r = RUNS[name]
    out = sample(model, torch.from_numpy(ref["z0"]), torch.from_numpy(ref["labels"]), steps=r["sample_steps"],
                 cfg=r["cfg"], method=r["mode"], shift=r["timestep_shift"], cfg_mode=r["cfg_mode"],
                 null_label=None if "nocfg" in name else 1000)
    assert np.abs(out.numpy() - ref[name]).max() <= 1e-4


def test_time_grid_and_shift():
    ts = time_grid(4, 0.15)
    assert ts[0] == 0 and ts[-1] == 1 and ts.dtype == torch.float32
    assert torch.allclose(ts, torch.tensor([shift_t(i / 4, 0.15) for i in range(5)]))
    assert shift_t(0.5, 1.0) == 0.5 and shift_t(0.3, 0.0) == 0.3


class GaussianFlow(torch.nn.Module):
    """Exact rectified-flow velocity for data ~ N(mu, s^2): x_t = t mu + sigma_t z0, sigma_t^2 = (1-t)^2 + t^2 s^2."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, t, y, grid=None):
        t = t.view(-1, 1, 1).double()
        var = (1 - t) ** 2 + t ** 2 * self.s ** 2
        dsig_over_sig = (-(1 - t) + t * self.s ** 2) / var
        return (self.mu + dsig_over_sig * (x - t * self.mu)).to(x.dtype)


def test_point_mass_euler_is_exact():
    target = torch.randn(1, 4, 3, dtype=torch.float64)

    def model(x, t, y, grid=None):  # exact field of a single data point; singular at t=1 (never evaluated)
        return (target - x) / (1 - t.double().view(-1, 1, 1))

    z0 = torch.randn(2, 4, 3, dtype=torch.float64)
    out = sample(model, z0, [0, 0], steps=7, shift=0.15, null_label=None)
    assert torch.allclose(out, target.expand_as(out), atol=1e-10)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("ab2", 2)])
def test_gaussian_endpoint_and_order(method, order):
    mu, s = 1.5, 0.3
    z0 = torch.randn(3, 8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = mu + s * z0
    errs = [(sample(GaussianFlow(mu, s), z0, [0, 0, 0], steps=n, method=method, shift=1.0, null_label=None)
             - exact).abs().max().item() for n in (16, 32, 64)]
    assert errs[-1] < (0.03 if order == 1 else 1e-3)
    rate = np.log2(errs[1] / errs[2])
    assert rate > order - 0.3, (method, errs, rate)  # midpoint is even 3rd order on this linear field


class Recorder(torch.nn.Module):
    """v = 1 for real labels, 0 for the null class; records every call's batch and time."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y, grid=None):
        self.calls.append((x.shape[0], float(t[0]), grid))
        return (y != 1000).to(x.dtype).view(-1, 1, 1).expand_as(x).clone()


def _total_guidance(cfg_mode, steps=8, cfg=3.0, shift=1.0, **kw):
    m = Recorder()
    out = sample(m, torch.zeros(1, 2, 2), [5], steps=steps, cfg=cfg, shift=shift, cfg_mode=cfg_mode, **kw)
    return out[0, 0, 0].item(), m.calls


def test_cfg_modes():
    dt = 1 / 8
    total, calls = _total_guidance("constant")
    assert total == pytest.approx(3.0) and len(calls) == 8 and all(c[0] == 2 for c in calls)  # one batched call
    total, _ = _total_guidance("linear")
    assert total == pytest.approx(sum(dt * (1 + 2 * (i + 1) / 8) for i in range(8)))
    total, _ = _total_guidance("late")
    assert total == pytest.approx(4 * dt * 1 + 4 * dt * 3)
    total, calls = _total_guidance("early-0.5")  # w only where the evaluation time t > 0.5
    assert total == pytest.approx(sum(dt * (3 if i / 8 > 0.5 else 1) for i in range(8)))
    assert [c[0] for c in calls] == [1] * 5 + [2] * 3  # w == 1 -> conditional pass only
    total, calls = _total_guidance("cfg_star-1-0")  # first step is a no-op
    assert total == pytest.approx(7 * dt * 3) and len(calls) == 7
    total, _ = _total_guidance("cfg_star-2-1")  # v = -1 * v_uncond = 0 here
    assert total == pytest.approx(6 * dt * 3)
    total, _ = _total_guidance("interval", cfg_interval=(0.25, 0.5))
    assert total == pytest.approx(sum(dt * (3 if 0.25 <= i / 8 <= 0.5 else 1) for i in range(8)))
    total, calls = _total_guidance("constant", null_label=None)
    assert total == pytest.approx(1.0) and all(c[0] == 1 for c in calls)


def test_cfg_parsing_and_errors():
    assert parse_cfg_mode("cfg_star-1-0") == ("cfg_star", 1, 0.0)
    assert parse_cfg_mode("early-0.3") == ("early", 0.3)
    assert guidance_at(2.0, ("cfg_star", 1, 0.5), 0, 4, 0.0) == (1.0, 0.5)
    with pytest.raises(ConfigError, match="unknown cfg_mode"):
        parse_cfg_mode("early")
    with pytest.raises(ConfigError, match="cfg_interval"):
        sample(Recorder(), torch.zeros(1, 2, 2), [1], cfg_mode="interval")
    with pytest.raises(ConfigError, match="unknown method"):
        sample(Recorder(), torch.zeros(1, 2, 2), [1], method="rk45")
    with pytest.raises(ConfigError, match="one label per sample"):
        sample(Recorder(), torch.zeros(2, 2, 2), [1])
    assert set(METHODS) >= {"euler", "heun", "midpoint", "ab2"}


def test_grid_layout_generator_and_eval_mode():
    from svgfeat.models.dit import test_dit_tiny as tiny

    torch.manual_seed(0)
    m = tiny(in_channels=8, num_classes=10)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n != "pos_embed":
                p.normal_(0, 0.05)
    m.train()  # sampling must not drop labels even if the caller left the model in training mode
    g = torch.Generator().manual_seed(3)
    a = sample(m, (2, 8, 4, 6), [1, 2], steps=3, cfg=2.0, null_label=10, generator=g)
    b = sample(m, (2, 8, 4, 6), [1, 2], steps=3, cfg=2.0, null_label=10, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 8, 4, 6) and torch.equal(a, b) and m.training
    z0 = torch.randn((2, 8, 4, 6), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(sample(m, z0, [1, 2], steps=3, cfg=2.0, null_label=10), a)
    sq = torch.randn(2, 8, 4, 4)
    tok_out = sample(m, sq.flatten(2).transpose(1, 2), [1, 2], steps=2, cfg=1.5, null_label=10)
    grid_out = sample(m, sq, [1, 2], steps=2, cfg=1.5, null_label=10)
    assert torch.allclose(tok_out.transpose(1, 2).reshape(2, 8, 4, 4), grid_out, atol=1e-6)


def test_flow_loss_target_and_generator():
    class Oracle(torch.nn.Module):  # returns exactly x1 - x0 given x1 (possible since x_t, t are known)
        def __init__(self, x1):
            super().__init__()
            self.x1 = x1

        def forward(self, xt, t, y, grid=None, drop_mask=None):
            t = t.view(-1, 1, 1)
            x0 = (xt - t * self.x1) / (1 - t)
            return torch.cat([self.x1 - x0, torch.zeros_like(x0)], -1)  # 2C channels like learn_sigma

    x1 = torch.randn(4, 16, 3, dtype=torch.float64)
    loss = flow_matching_loss(Oracle(x1), x1, torch.zeros(4, dtype=torch.long), generator=torch.Generator())
    assert loss.item() < 1e-12
    zero = Oracle(x1)
    zero.forward = lambda xt, t, y, grid=None, drop_mask=None: torch.zeros_like(xt)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    l1 = flow_matching_loss(zero, x1, torch.zeros(4, dtype=torch.long), generator=g1)
    l2 = flow_matching_loss(zero, x1, torch.zeros(4, dtype=torch.long), generator=g2)
    assert l1.item() == l2.item() and l1.item() > 0.5


def test_generate_and_interpolate_cli(tmp_path):
    """CLI plumbing with the tiny registered encoder (random weights) and a tiny 72-channel DiT."""
    from click.testing import CliRunner
    from PIL import Image

    from svgfeat.cli.generate import generate
    from svgfeat.cli.interpolate import interpolate
    from svgfeat.generation.stats import save_stats
    from svgfeat.models.build import create_model
    from svgfeat.models.dit import save_dit
    from svgfeat.models.dit import test_dit_tiny as tiny

    C = create_model("test_tiny").latent_channels
    torch.manual_seed(0)
    save_dit(tiny(in_channels=C, input_size=4, num_classes=10), tmp_path / "dit.safetensors")
    save_stats(tmp_path / "stats.pt", torch.zeros(C), torch.ones(C))
    runner = CliRunner()
    args = ["--dit", str(tmp_path / "dit.safetensors"), "--model", "test_tiny", "--stats",
            str(tmp_path / "stats.pt"), "--classes", "1,7", "--n", "2", "--steps", "3", "--cfg", "2",
            "--method", "ab2", "-o", str(tmp_path / "gen")]
    r = runner.invoke(generate, args)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert names == ["class0001_000.png", "class0001_001.png", "class0007_000.png", "class0007_001.png",
                     "grid.png"]
    assert Image.open(tmp_path / "gen" / "grid.png").size == (128, 128)
    bad = runner.invoke(generate, [*args[:-1], str(tmp_path / "g2"), "--classes", "10"])
    assert bad.exit_code == 2 and "class ids must be in [0, 10)" in bad.output
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / name)
    r = runner.invoke(interpolate, [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o",
                                    str(tmp_path / "strip.png"), "--model", "test_tiny", "--n", "5",
                                    "--size", "64", "--with-inputs"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "strip.png").size == (7 * 64, 64)
