# SVG features + linear depth head on NYUv2: DINOv3's frozen linear protocol (config-nyu.yaml) in mmseg's
# DepthEstimator.
#
#   BN + 1x1 conv to 256 depth bins on last-layer patch features (x4 upsampled), linear bins over 0.001-10 m,
#   relu+0.1-normalised bin weights -> depth (classification-regression); SigLoss;
#   AdamW lr 3e-4, wd 1e-4, betas (0.9, 0.99), gradient-norm clip 35; one-cycle lr (12.8k of 38.4k iterations
#   warming up, final lr / 1000 ... as DINOv3's WarmupOneCycleLR); batch 2 per GPU x 8 GPUs;
#   random crop 416 x 544 + horizontal flip (DINOv3 also jitters brightness 0.75-1.25: not in mmseg's pipeline);
#   evaluation on the full 480 x 640 image with flip TTA ('slide_flip' with one window), Eigen crop
#   (DepthMetric crop_type='nyu_crop'), valid depth 0.001-10 m.
#
# Data: mmseg's NYU layout data/nyu/{images,annotations}/{train,test} (depth PNG in millimetres), e.g. from
#   mmsegmentation's tools/dataset_converters/nyu.py; `svgfeat.data.depth.write_depth_folder(ds, root,
#   layout="nyu-mmseg")` writes any svgfeat depth dataset (sample:depth included) in that layout.
# Train:  python tools/mmseg_train.py $(python -c "from svgfeat.integrations.mmseg import config_path; \
#           print(config_path('svg_linear_nyu_416x544_38k.py'))") \
#           --cfg-options model.backbone.dinov3=/path/dinov3.pth model.backbone.svg=/path/svg.ckpt data_root=/data/nyu
# DINOv3 features only: model.backbone.svg=None model.backbone.group=dino model.decode_head.in_channels=[384]
# Tests: model.backbone.model=test_tiny (random tiny encoder, 64+8 channels; set in_channels=[72]).
# The numbers are svgfeat's `nyuv2-linear` protocol preset (svgfeat.evaluation.protocols.DENSE_PROTOCOLS,
# what `svgfeat depth train` uses); tests/test_dense_protocols.py holds this config and the preset equal.
custom_imports = dict(imports=["svgfeat.integrations.mmseg", "svgfeat.integrations.mmseg_depth"],
                      allow_failed_imports=False)
default_scope = "mmseg"

crop_size = (416, 544)
min_depth, max_depth = 1e-3, 10.0
data_root = "data/nyu"
norm_cfg = dict(type="SyncBN", requires_grad=True)  # plain BN when not distributed (torch falls back)

data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],  # ImageNet mean/std on 0..255 RGB, as svgfeat.preprocess
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=0,  # padded depth = 0 = no ground truth
    size=crop_size,
)
model = dict(
    type="DepthEstimator",
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
        type="BinsDepthHead",
        in_channels=[392],
        in_index=[0],
        input_transform="resize_concat",
        n_bins=256,
        min_depth=min_depth,
        max_depth=max_depth,
        bins="linear",
        norm="linear",
        upsample=4,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="SVGSigLoss", min_depth=min_depth, max_depth=max_depth, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide_flip", crop_size=(480, 640), stride=(480, 640)),  # whole image + flip TTA
)

# ---------------------------------------------------------------- data
dataset_type = "NYUDataset"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),  # PNG millimetres -> metres
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs", meta_keys=("img_path", "depth_map_path", "ori_shape", "img_shape", "pad_shape",
                                          "scale_factor", "flip", "flip_direction", "category_id")),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs", meta_keys=("img_path", "depth_map_path", "ori_shape", "img_shape", "pad_shape",
                                          "scale_factor", "flip", "flip_direction", "category_id")),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="images/train", depth_map_path="annotations/train"),
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, test_mode=True,
                 data_prefix=dict(img_path="images/test", depth_map_path="annotations/test"),
                 pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="DepthMetric", min_depth_eval=min_depth, max_depth_eval=max_depth, crop_type="nyu_crop")
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule
max_iters = 38400
warmup_iters = 12800
optim_wrapper = dict(type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=3e-4, weight_decay=1e-4, betas=(0.9, 0.99)),
                     clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type="OneCycleLR", eta_max=3e-4, total_steps=max_iters, pct_start=warmup_iters / max_iters,
         anneal_strategy="cos", div_factor=25.0, final_div_factor=1000.0, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=3840)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# ---------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # checkpoints hold plain tensors + JSON metadata only (SVGPlainCheckpointHook), so load_from works under
    # torch >= 2.6's weights_only loading; resume does not (no optimizer state).
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3840, save_optimizer=False,
                    save_param_scheduler=False),
    sampler_seed=dict(type="DistSamplerSeedHook"),
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
