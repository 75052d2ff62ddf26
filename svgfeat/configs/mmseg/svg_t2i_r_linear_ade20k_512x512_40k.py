# SVG-T2I Autoencoder-R at 512 px (stage 2) + linear head on ADE20K 512x512 (same protocol as
# svg_linear_ade20k_512x512_40k.py). Latent: 384 DINOv3 + 8 residual channels = 392; the RoPE residual
# encoder runs natively at 512 (no position-embedding interpolation, unlike the original SVG residual).
# svg_config=None: the architecture is read from the weights (the released svg_autoencoder_R_stage*.yaml are
# copies of the P ones; svgfeat warns and trusts the weights if you pass one). Stage 3 (1024 px) works the same.
_base_ = ["./svg_linear_ade20k_512x512_40k.py"]
model = dict(backbone=dict(svg="checkpoints/svg_autoencoder-R-stage2.ckpt", svg_config=None, group="latent"),
             decode_head=dict(in_channels=[392]))
