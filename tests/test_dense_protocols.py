"""The dense protocol presets live as data in one module (issue P.2): the CLI, the library and the shipped mmseg
configs use the same numbers."""

from __future__ import annotations

import runpy

import pytest

from svgfeat.evaluation.dense import head_settings
from svgfeat.evaluation.protocols import DENSE_PROTOCOLS, dense_protocol
from svgfeat.heads.depth import LinearDepthHead
from svgfeat.heads.segmentation import LinearSegHead
from svgfeat.integrations.mmseg import config_path


def _config(name):
    return runpy.run_path(str(config_path(name)))  # plain-Python mmengine configs (no _base_)


def test_mmseg_configs_state_the_presets():
    ade, s = _config("linear"), DENSE_PROTOCOLS["ade20k-linear"].settings
    assert ade["crop_size"] == (s["crop_size"],) * 2 and ade["max_iters"] == s["max_iters"]
    assert ade["warmup_iters"] == s["warmup_iters"]
    opt = ade["optim_wrapper"]["optimizer"]
    assert (opt["lr"], opt["weight_decay"]) == (s["lr"], s["weight_decay"])
    assert ade["train_dataloader"]["batch_size"] * 8 == s["batch_size"]  # 2 per GPU x 8 GPUs
    assert ade["model"]["test_cfg"]["crop_size"] == (s["slide_crop"],) * 2
    assert ade["model"]["test_cfg"]["stride"] == (s["slide_stride"],) * 2
    nyu, d = _config("svg_linear_nyu_416x544_38k.py"), DENSE_PROTOCOLS["nyuv2-linear"].settings
    assert nyu["crop_size"] == d["crop_size"] and (nyu["min_depth"], nyu["max_depth"]) == (d["min_depth"], d["max_depth"])
    assert (nyu["max_iters"], nyu["warmup_iters"]) == (d["max_iters"], d["warmup_iters"])
    opt = nyu["optim_wrapper"]
    assert (opt["optimizer"]["lr"], opt["optimizer"]["weight_decay"]) == (d["lr"], d["weight_decay"])
    assert opt["clip_grad"]["max_norm"] == d["grad_clip"] and nyu["model"]["decode_head"]["n_bins"] == d["n_bins"]
    assert nyu["train_dataloader"]["batch_size"] * 8 == d["batch_size"]


@pytest.mark.parametrize("task, cls", [("seg", LinearSegHead), ("depth", LinearDepthHead)])
def test_presets_are_head_parameters_and_the_head_defaults(task, cls):
    params, run = head_settings(task, "/data/full")
    assert run["task"] == task and dense_protocol(task, "/data/full").name.endswith("-linear")
    head = cls(**params)  # every preset key is a head parameter
    defaults = cls().get_params()
    assert {k: defaults[k] for k in params} == params  # the full protocol is the head's default
    small, _ = head_settings(task, "sample:x", max_iters=7)
    assert small["max_iters"] == 7 and small["crop_size"] != params["crop_size"] and head.max_iters == params["max_iters"]


def test_depth_crop_override_sets_one_window_per_crop():
    params, _ = head_settings("depth", "/data/nyu", crop_size=(64, 80), grad_clip=0)
    assert params["slide_crop"] == (64, 80) and params["slide_stride"] == (32, 40) and params["grad_clip"] is None


def test_the_commands_hold_no_protocol_table():
    import svgfeat.cli.depth as depth_cli
    import svgfeat.cli.seg as seg_cli

    for mod in (seg_cli, depth_cli):
        assert not hasattr(mod, "PROTOCOL") and not hasattr(mod, "SAMPLE")
