"""mmseg depth: the shipped NYUv2 linear config (DepthEstimator + SVGBackbone + BinsDepthHead) builds, trains a
step on CPU, predicts, and runs through mmengine's Runner on sample:depth written in mmseg's NYU layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_extra  # noqa: E402

require_extra("mmseg")  # skip locally without the [mmseg] extra, fail under CI=true

from mmengine.config import Config  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from svgfeat.integrations import mmseg as integ  # noqa: E402
from svgfeat.integrations import mmseg_depth  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config() -> Config:
    cfg = Config.fromfile(integ.config_path(mmseg_depth.DEPTH_CONFIG))
    cfg.model.backbone.update(dict(model="test_tiny", dinov3=None, svg=None))
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.test_cfg = dict(mode="slide_flip", crop_size=(64, 64), stride=(48, 48))
    integ.match_head_channels(cfg)
    return cfg


def test_shipped_depth_config_trains_a_step_and_predicts():
    from svgfeat.heads.depth import bin_centers, decode_bins

    cfg = tiny_config()
    assert cfg.model.decode_head.in_channels == [72] and cfg.model.type == "DepthEstimator"
    model = integ.build_segmentor(cfg)
    model.train()
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g) for _ in range(2)]
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_depth_map = PixelData(data=torch.rand(1, 64, 64, generator=g) * 9 + 0.5)
        s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), True)
    losses = model(**data, mode="loss")
    loss = losses["decode.loss_sig"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    head = model.decode_head
    assert head.conv_seg.weight.grad is not None and head.conv_seg.out_channels == 256
    assert all(p.grad is None for p in model.backbone.encoder.parameters())
    # the head decodes exactly like the native LinearDepthHead
    x = model.backbone(data["inputs"])
    model.eval()
    with torch.no_grad():
        logits = head.conv_seg(head.bn(torch.nn.functional.interpolate(x[0], scale_factor=4, mode="bilinear")))
        torch.testing.assert_close(head(x), decode_bins(logits, bin_centers(256, 1e-3, 10.0)))
        s = SegDataSample()
        s.set_metainfo(dict(img_shape=(70, 90), ori_shape=(70, 90)))
        out = model.test_step(dict(inputs=[torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)], data_samples=[s]))
    d = out[0].pred_depth_map.data
    assert d.shape == (1, 70, 90) and float(d.min()) >= 1e-3 and float(d.max()) <= 10.0


def test_runner_trains_and_evaluates_depth_on_the_sample(tmp_path):
    from mmengine.runner import Runner

    from svgfeat.data.depth import open_depth_dataset, write_depth_folder

    ds = open_depth_dataset("sample:depth/val").subset(range(3))
    for split in ("train", "test"):
        write_depth_folder(ds, tmp_path / "nyu", layout="nyu-mmseg", split=split)
    cfg = tiny_config()
    for dl in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        dl.update(num_workers=0, persistent_workers=False)
        dl.dataset.update(data_root=str(tmp_path / "nyu"), img_suffix=".png")
    cfg.train_dataloader.dataset.pipeline[2].update(crop_size=(64, 64))  # RandomCrop
    cfg.val_evaluator = cfg.test_evaluator = dict(type="DepthMetric", min_depth_eval=1e-3, max_depth_eval=10.0)
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.param_scheduler[0].update(total_steps=4, pct_start=0.5)  # one-cycle needs >= 2 steps per phase
    cfg.default_hooks.checkpoint.interval = 2
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    rmse = runner.message_hub.get_scalar("val/rmse").current()
    assert np.isfinite(rmse) and rmse > 0
    sd = torch.load(tmp_path / "work" / "iter_2.pth", weights_only=True)
    assert "decode_head.conv_seg.weight" in sd["state_dict"]
