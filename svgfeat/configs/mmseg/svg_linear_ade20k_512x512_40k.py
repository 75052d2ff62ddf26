# SVG features + linear head (BN + 1x1 conv) on ADE20K 512x512: DINOv3's frozen linear protocol.
#
#   AdamW lr 1e-3, wd 1e-3; 1500 linear-warmup iterations then cosine decay to 0 over 40k iterations;
#   batch 2 per GPU x 8 GPUs; 512 crops of images rescaled by 0.5-2.0, horizontal flip;
#   sliding-window evaluation (crop 512, stride 341); logits upsampled bilinearly to the image.
#
# Train with svgfeat's tools/mmseg_train.py (it points every dataloader at `data_root=`), e.g.
#   python tools/mmseg_train.py $(python -c "from svgfeat.integrations.mmseg import config_path; print(config_path('linear'))") \
#       --cfg-options model.backbone.dinov3=/path/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth \
#                     model.backbone.svg=/path/svg_autoencoder_dinov3s16p_vit-s_epoch40.ckpt data_root=/data/ade/ADEChallengeData2016
# mmseg's own tools/train.py reads this file too, but there `data_root=` alone does not reach the datasets
# (they copied it when the file was read): also pass train_dataloader.dataset.data_root=... and
# val_dataloader.dataset.data_root=... (test_dataloader likewise).
# DINOv3 features only: model.backbone.svg=None model.backbone.group=dino model.decode_head.in_channels=[384]
# Tests: model.backbone.model=test_tiny (random tiny encoder, 64+8 channels; set in_channels=[72]).
# The numbers are svgfeat's `ade20k-linear` protocol preset (svgfeat.evaluation.protocols.DENSE_PROTOCOLS,
# what `svgfeat seg train` uses); tests/test_dense_protocols.py holds this config and the preset equal.
custom_imports = dict(imports=["svgfeat.integrations.mmseg"], allow_failed_imports=False)
default_scope = "mmseg"

crop_size = (512, 512)
num_classes = 150
data_root = "data/ade/ADEChallengeData2016"
norm_cfg = dict(type="SyncBN", requires_grad=True)  # plain BN when not distributed (torch falls back)

data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],  # ImageNet mean/std on 0..255 RGB, as svgfeat.preprocess
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="SVGBackbone",
        dinov3="checkpoints/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
        svg="checkpoints/svg_autoencoder_dinov3s16p_vit-s_epoch40.ckpt",
        svg_config=None,
        model=None,
        group="latent",  # 384 DINOv3 + 8 residual channels
        out_indices=(-1,),  # last block (normed)
        frozen=True,
        alignment="batch",
    ),
    decode_head=dict(
        type="BNHead",
        in_channels=[392],
        in_index=[0],
        input_transform="resize_concat",
        dropout_ratio=0.0,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

# ---------------------------------------------------------------- data
dataset_type = "ADE20KDataset"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, reduce_zero_label=True,
                 data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, reduce_zero_label=True,
                 data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
                 pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule
max_iters = 40000
warmup_iters = 1500
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-3, betas=(0.9, 0.999)))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=4000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# ---------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # mmengine loads checkpoints with a plain torch.load (weights_only=True under torch >= 2.6): checkpoints
    # hold plain tensors + JSON metadata only (SVGPlainCheckpointHook below), so load_from works; resume does not.
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=4000, save_optimizer=False, save_param_scheduler=False),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
custom_hooks = [dict(type="SVGPlainCheckpointHook")]
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
