"""mmsegmentation integration: SVGBackbone + BNHead, the shipped configs, frozen training, metric parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import require_extra  # noqa: E402

require_extra("mmseg")  # skipped without the [mmseg] extra; FAILS under CI=true

from mmengine.config import Config  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from svgfeat.errors import ConfigError  # noqa: E402
from svgfeat.heads.seg_metrics import SegMetric  # noqa: E402
from svgfeat.integrations import mmseg as integ  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription

K = 5


def tiny_config(name: str, **backbone) -> Config:
    """A shipped config with the random tiny backbone, K classes and 64-px crops."""
    cfg = Config.fromfile(integ.config_path(name))
    cfg.model.backbone.update(dict(model="test_tiny", dinov3=None, svg=None, **backbone))
    cfg.model.decode_head.num_classes = K
    if cfg.model.get("auxiliary_head"):
        cfg.model.auxiliary_head.num_classes = K
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.test_cfg = dict(mode="slide", crop_size=(64, 64), stride=(48, 48))
    integ.match_head_channels(cfg)
    return cfg


def batch(model, n=2, size=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g) for _ in range(n)]
    samples = []
    for _ in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, K, (1, *size), generator=g))
        s.set_metainfo(dict(img_shape=size, ori_shape=size, pad_shape=size))
        samples.append(s)
    return model.data_preprocessor(dict(inputs=imgs, data_samples=samples), True)


@pytest.mark.parametrize("name", ["linear", "upernet"])
def test_shipped_config_trains_frozen_and_predicts(name):
    cfg = tiny_config(name)
    assert cfg.custom_imports["imports"] == ["svgfeat.integrations.mmseg"]
    model = integ.build_segmentor(cfg)
    enc = model.backbone.encoder
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model.train()
    assert not enc.training and not enc.backbone.training  # frozen encoder stays in eval mode
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = model(**batch(model), mode="loss")
    loss = sum(v for k, v in losses.items() if k.endswith("loss_ce"))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in enc.parameters())
    assert model.decode_head.conv_seg.weight.grad is not None
    if name == "upernet":  # the simple feature pyramid trains while the encoder is frozen
        assert all(p.grad is not None for p in model.backbone.pyramid.parameters())
    opt.step()
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)
    # inference at a size that is not a multiple of 16 and larger than the slide crop
    model.eval()
    img = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8)
    s = SegDataSample()
    s.set_metainfo(dict(img_shape=(80, 100), ori_shape=(80, 100)))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[img], data_samples=[s]))
    assert out[0].pred_sem_seg.data.shape == (1, 80, 100)
    assert out[0].seg_logits.data.shape == (K, 80, 100)


def test_backbone_outputs_match_encoder_and_pad_crop(tiny):
    bb = integ.SVGBackbone(model="test_tiny", out_indices=(0, -1))
    x = torch.randn(2, 3, 64, 80)
    outs = bb(x)
    f = bb.encoder.encode(x, layers=[0, 1])
    assert [tuple(o.shape) for o in outs] == [(2, 72, 4, 5)] * 2
    torch.testing.assert_close(outs[0], torch.cat([f.layers[0][1], f.residual], 1))
    torch.testing.assert_close(outs[1], f.latent)
    # 70 x 90 is padded to 80 x 96 and cropped back to ceil(70/16) x ceil(90/16)
    assert bb(torch.randn(1, 3, 70, 90))[0].shape == (1, 72, 5, 6)
    last = integ.SVGBackbone(model="test_tiny", out_indices=(0, 1), residual_at="last")
    assert last.out_channels == [64, 72] and [o.shape[1] for o in last(x)] == [64, 72]
    dino = integ.SVGBackbone(model="test_tiny_dino", group="dino")
    assert dino(x)[0].shape == (2, 64, 4, 5)


def test_pyramid_strides_and_out_index_fractions():
    assert integ.resolve_out_indices((0.25, 0.5, 0.75, 1.0), 12) == [2, 5, 8, 11]
    assert integ.resolve_out_indices((0.25, 0.5, 0.75, 1.0), 2) == [0, 0, 1, 1]
    assert integ.resolve_out_indices((-1,), 12) == [11]
    bb = integ.SVGBackbone(model="test_tiny", out_indices=(0.25, 0.5, 0.75, 1.0), multi_scale=True)
    shapes = [tuple(o.shape[-2:]) for o in bb(torch.randn(1, 3, 64, 64))]
    assert shapes == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 4, 8, 16, 32
    one = integ.SVGBackbone(model="test_tiny", out_indices=(-1,), multi_scale=True)
    assert len(one(torch.randn(1, 3, 64, 64))) == 4


def test_backbone_validation_errors():
    with pytest.raises(ConfigError, match="group"):
        integ.SVGBackbone(model="test_tiny", group="cls")
    with pytest.raises(ConfigError, match="out of range"):
        integ.SVGBackbone(model="test_tiny", out_indices=(5,))
    with pytest.raises(ConfigError, match="DINOv3-only"):
        integ.SVGBackbone(model="test_tiny_dino", group="latent")
    with pytest.raises(ConfigError, match="multi_scale"):
        integ.SVGBackbone(model="test_tiny", out_indices=(0, 1), multi_scale=True)
    with pytest.raises(ConfigError, match="shipped"):
        integ.config_path("nope")


def test_unfrozen_backbone_gets_gradients():
    bb = integ.SVGBackbone(model="test_tiny", frozen=False)
    bb.train()
    bb(torch.randn(2, 3, 32, 32))[0].square().mean().backward()
    assert bb.encoder.backbone.model.blocks[0].attn.qkv.weight.grad is not None
    assert bb.encoder.residual.heads[2].weight.grad is not None


def test_iou_metric_and_ours_agree_on_model_predictions():
    from mmseg.evaluation import IoUMetric

    model = integ.build_segmentor(tiny_config("linear"))
    model.eval()
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(K)]}
    ours = SegMetric(K)
    rng = np.random.default_rng(0)
    for _ in range(3):
        img = torch.as_tensor(rng.integers(0, 256, (3, 64, 96), dtype=np.uint8))
        gt = rng.integers(0, K, (64, 96))
        gt[:4] = 255
        s = SegDataSample()
        s.set_metainfo(dict(img_shape=(64, 96), ori_shape=(64, 96)))
        s.gt_sem_seg = PixelData(data=torch.as_tensor(gt)[None])
        with torch.no_grad():
            out = model.test_step(dict(inputs=[img], data_samples=[s]))
        metric.process({}, [o.to_dict() for o in out])
        ours.update(out[0].pred_sem_seg.data[0].numpy(), gt)
    theirs = metric.compute_metrics(metric.results)
    assert {k: np.float32(v) for k, v in ours.summary().items()} == {k: theirs[k] for k in ("aAcc", "mIoU", "mAcc")}
    print("mmseg IoUMetric", {k: float(v) for k, v in theirs.items()}, "svgfeat", ours.summary())


def test_bnhead_is_bn_plus_linear():
    from svgfeat.integrations.mmseg import BNHead

    head = BNHead(in_channels=[8, 4], in_index=[0, 1], num_classes=3)
    assert head.channels == 12 and head.dropout is None
    out = head([torch.randn(2, 8, 4, 4), torch.randn(2, 4, 2, 2)])
    assert out.shape == (2, 3, 4, 4)
    with pytest.raises(ConfigError, match="channels"):
        BNHead(in_channels=[8], in_index=[0], channels=16, num_classes=3)


def test_runner_trains_validates_and_checkpoints_reload(tmp_path):
    """The shipped linear config through mmengine's Runner (the `tools/train.py` path) on the sample set."""
    from mmengine.runner import Runner, load_checkpoint

    from svgfeat.data.segmentation import DIGITSEG_CLASSES, open_seg_dataset, write_folder_dataset

    ds = open_seg_dataset("sample:digitseg/val").subset(range(4))
    for split in ("train", "val"):  # ADE20K layout: raw labels are class + 1, 0 = ignored
        write_folder_dataset(ds, tmp_path / "data", layout="ade20k", split=split)
    cfg = tiny_config("linear")
    cfg.model.decode_head.num_classes = len(DIGITSEG_CLASSES)
    for dl in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        dl.update(num_workers=0, persistent_workers=False)
        dl.dataset.update(type="BaseSegDataset", data_root=str(tmp_path / "data"), img_suffix=".png",
                          seg_map_suffix=".png", reduce_zero_label=True, metainfo=dict(classes=DIGITSEG_CLASSES))
    cfg.train_dataloader.dataset.pipeline[2].update(scale=(256, 64))  # RandomResize
    cfg.train_dataloader.dataset.pipeline[3].update(crop_size=(64, 64))  # RandomCrop
    cfg.val_dataloader.dataset.pipeline[1].update(scale=(256, 64))
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.param_scheduler[0].end = 1
    cfg.param_scheduler[1].update(begin=1, end=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.visualization = dict(type="SegVisualizationHook", draw=False)
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.message_hub.get_scalar("val/mIoU")
    assert metrics is not None
    ckpt = tmp_path / "work" / "iter_2.pth"
    sd = torch.load(ckpt, weights_only=True)  # plain tensors + JSON metadata only
    assert "message_hub" not in sd and "optimizer" not in sd
    fresh = integ.build_segmentor(cfg)
    load_checkpoint(fresh, str(ckpt), map_location="cpu")  # mmengine's own loader (plain torch.load)
    trained = runner.model.state_dict()
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0, equal_nan=True)
