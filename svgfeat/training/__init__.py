"""Training of the SVG autoencoder (residual encoder + pixel decoder on a frozen DINOv3).

Modules: ``losses`` (L1 + LPIPS + PatchGAN hinge, adaptive weight), ``lpips``, ``discriminator``,
``rope_aug`` (DINOv3 train-mode RoPE rescale), ``ae_model`` (sizing + training forward), ``ae_data``
(deterministic crops / data order), ``ae_state`` (checkpoints), ``ae_train`` (:func:`train_ae`),
``recon_metrics`` (PSNR / SSIM / LPIPS / rFID); torch.distributed helpers live in :mod:`svgfeat.distributed`.
"""
