# SVG-T2I Autoencoder-R at 512 px (stage 2) + UPerNet on ADE20K 512x512 (same protocol as
# svg_upernet_ade20k_512x512_80k.py): 4 blocks, each with the 8 residual channels appended (392 ch).
# svg_config=None: the architecture is read from the weights (see svg_t2i_r_linear_ade20k_512x512_40k.py).
_base_ = ["./svg_upernet_ade20k_512x512_80k.py"]
model = dict(backbone=dict(svg="checkpoints/svg_autoencoder-R-stage2.ckpt", svg_config=None, group="latent"),
             decode_head=dict(in_channels=[392, 392, 392, 392]), auxiliary_head=dict(in_channels=392))
