# SVG features + UPerNet on ADE20K 512x512 (frozen encoder; trainable feature pyramid and heads).
#
#   Backbone: normed outputs of 4 blocks at 1/4, 1/2, 3/4 and all of the depth (2, 5, 8, 11 for ViT-S/16+),
#   each with the 8 residual channels appended (392 ch), turned into strides 4/8/16/32 by a ViTDet/BEiT simple
#   feature pyramid (deconv x2 / deconv / identity / max-pool). UPerHead (512 ch) + auxiliary FCNHead.
#   Schedule (a reasonable default, not a published SVG protocol): AdamW lr 1e-4, wd 0.01, 1500 warmup
#   iterations then poly decay over 80k iterations, batch 2 per GPU x 8 GPUs; 512 crops, 0.5-2.0 rescale,
#   flip, photometric distortion; sliding-window evaluation (crop 512, stride 341).
#
# Train with tools/mmseg_train.py as the linear config (see its header for weights / data overrides).
# DINOv3 features only: model.backbone.svg=None model.backbone.group=dino and 384 for every in_channels.
# Tests: model.backbone.model=test_tiny (random tiny encoder, 72 channels; set the in_channels accordingly).
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
        group="latent",  # 384 DINOv3 + 8 residual channels on every level (residual_at="all")
        out_indices=(0.25, 0.5, 0.75, 1.0),  # depth fractions -> blocks 2, 5, 8, 11 of ViT-S/16+
        residual_at="all",
        multi_scale=True,  # strides 4, 8, 16, 32
        scales=(4, 2, 1, 0.5),
        norm_cfg=norm_cfg,
        frozen=True,
        alignment="batch",
    ),
    decode_head=dict(
        type="UPerHead",
        in_channels=[392, 392, 392, 392],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=392,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True),
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
    dict(type="PhotoMetricDistortion"),
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
max_iters = 80000
warmup_iters = 1500
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999)))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=8000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# ---------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # mmengine loads checkpoints with a plain torch.load (weights_only=True under torch >= 2.6): checkpoints
    # hold plain tensors + JSON metadata only (SVGPlainCheckpointHook below), so load_from works; resume does not.
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=8000, save_optimizer=False, save_param_scheduler=False),
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
