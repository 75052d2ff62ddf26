# SVG-T2I Autoencoder-P at 512 px (stage 2) + linear head on ADE20K 512x512 (same protocol as
# svg_linear_ade20k_512x512_40k.py). P has no residual channels: group="latent" gives the 384 DINOv3 channels
# (the P decoder is not used for segmentation; the features equal DINOv3's, batch-independent).
_base_ = ["./svg_linear_ade20k_512x512_40k.py"]
model = dict(backbone=dict(svg="checkpoints/svg_autoencoder-P-stage2.ckpt", svg_config=None, group="latent"),
             decode_head=dict(in_channels=[384]))
