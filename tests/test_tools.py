"""tools/: mmseg_train.py / mmseg_test.py end to end (subprocesses, CPU) on a tiny EncoderDecoder with SVGBackbone
(test_tiny) and sample:digitseg written by tools/write_sample.py; plain and resumable checkpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import require_extra  # noqa: E402

require_extra("mmseg")  # skip locally without the [mmseg] extra, fail under CI=true

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"


def tool(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """sample:digitseg (6 images) in ADE20K layout + a tiny config derived from the shipped linear one."""
    from mmengine.config import Config

    from svgfeat.data.segmentation import DIGITSEG_CLASSES
    from svgfeat.integrations import mmseg as integ

    tmp = tmp_path_factory.mktemp("tools")
    for split in ("train", "val"):
        r = tool(TOOLS / "write_sample.py", "sample:digitseg/val", tmp / "data", "--split", split, "--limit", "6",
                 cwd=tmp)
        assert r.returncode == 0, r.stderr
    cfg = Config.fromfile(integ.config_path("linear"))
    cfg.model.backbone.update(dict(model="test_tiny", dinov3=None, svg=None))
    cfg.model.decode_head.update(num_classes=len(DIGITSEG_CLASSES), in_channels=[72])
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.test_cfg = dict(mode="slide", crop_size=(64, 64), stride=(48, 48))
    for dl in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        dl.update(num_workers=0, persistent_workers=False)
        dl.dataset.update(type="BaseSegDataset", data_root=str(tmp / "data"), img_suffix=".jpg",
                          seg_map_suffix=".png", reduce_zero_label=True, metainfo=dict(classes=DIGITSEG_CLASSES))
    cfg.train_dataloader.dataset.pipeline[2].update(scale=(256, 64))  # RandomResize
    cfg.train_dataloader.dataset.pipeline[3].update(crop_size=(64, 64))  # RandomCrop
    cfg.val_dataloader.dataset.pipeline[1].update(scale=(256, 64))
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=4)]
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.visualization = dict(type="SegVisualizationHook", draw=False)
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.randomness = dict(seed=0)
    cfg.dump(tmp / "tiny.py")
    return tmp


def scalar(work_dir: Path, key: str) -> float:
    vals = [json.loads(line)[key] for f in work_dir.glob("*/vis_data/scalars.json")
            for line in f.read_text().splitlines() if key in json.loads(line)]
    assert vals, f"no {key} logged under {work_dir}"
    return vals[-1]


def test_train_then_test_plain_checkpoint(setup):
    tmp = setup
    r = tool(TOOLS / "mmseg_train.py", tmp / "tiny.py", "--work-dir", tmp / "w", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp / "w" / "iter_2.pth"
    sd = torch.load(ckpt, weights_only=True)  # plain: weights + JSON metadata only
    assert "optimizer" not in sd and "message_hub" not in sd
    val_miou = scalar(tmp / "w", "mIoU")
    r = tool(TOOLS / "mmseg_test.py", tmp / "tiny.py", ckpt, "--work-dir", tmp / "t", "--show-dir", tmp / "vis", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    # the same model on the same images: the test mIoU equals the validation mIoU logged while training
    m = re.search(r"'mIoU': ([0-9.]+)", r.stdout)
    assert m and float(m.group(1)) == pytest.approx(val_miou, abs=1e-2)
    painted = sorted((tmp / "vis").rglob("*.png"))
    assert len(painted) == 6, painted  # --show-dir painted every test image


def test_resume_continues_from_the_latest_checkpoint_and_test_loads_it(setup):
    tmp = setup
    r = tool(TOOLS / "mmseg_train.py", tmp / "tiny.py", "--work-dir", tmp / "r", "--resume", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp / "r" / "iter_2.pth").exists()
    r = tool(TOOLS / "mmseg_train.py", tmp / "tiny.py", "--work-dir", tmp / "r", "--resume",
             "--cfg-options", "train_cfg.max_iters=4", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "resumed epoch: 0, iter: 2" in log and "Iter(train) [1/4]" not in log
    assert (tmp / "r" / "iter_4.pth").exists()
    full = torch.load(tmp / "r" / "iter_4.pth", weights_only=True)  # resumable, still weights-only loadable
    assert {"optimizer", "param_schedulers", "message_hub"} <= set(full) and full["meta"]["iter"] == 4
    r = tool(TOOLS / "mmseg_test.py", tmp / "tiny.py", tmp / "r" / "iter_4.pth", "--work-dir", tmp / "rt", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mIoU" in r.stdout


def test_user_mistakes_are_one_line_errors(tmp_path):
    r = tool(TOOLS / "mmseg_train.py", tmp_path / "missing.py", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"Error: config not found: {tmp_path / 'missing.py'}"
    (tmp_path / "cfg.py").write_text("x = 1\n")
    r = tool(TOOLS / "mmseg_test.py", tmp_path / "cfg.py", tmp_path / "nope.pth", cwd=tmp_path)
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    r = tool(TOOLS / "write_sample.py", "sample:nope", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("Error:")
