# SVG-T2I Autoencoder-P at 512 px (stage 2) + UPerNet on ADE20K 512x512 (same protocol as
# svg_upernet_ade20k_512x512_80k.py). P has no residual channels: every level has the 384 DINOv3 channels.
_base_ = ["./svg_upernet_ade20k_512x512_80k.py"]
model = dict(backbone=dict(svg="checkpoints/svg_autoencoder-P-stage2.ckpt", svg_config=None, group="latent"),
             decode_head=dict(in_channels=[384, 384, 384, 384]), auxiliary_head=dict(in_channels=384))
