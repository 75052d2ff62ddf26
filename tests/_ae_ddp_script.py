"""Worker for tests/test_ae_train.py: trains test_tiny for a few steps (``python`` or ``torchrun``).

usage: python tests/_ae_ddp_script.py OUT_DIR [key=value ...]   (or torchrun --nproc_per_node 2 tests/_ae_ddp_script.py OUT_DIR)
The settings make W ranks x B/W images equivalent to 1 process x B images: residual dropout 0 (dropout
masks are drawn per rank) and global batch statistics; masking, RoPE rescale and the discriminator
(GlobalBatchNorm2d, adaptive weight) are all active.
"""

import sys

import torch

from svgfeat.training.ae_train import train_ae

DDP_SETTINGS = dict(size=64, steps=5, batch_size=4, lr=1e-3, lpips="random", lpips_width_div=8, disc_ndf=8,
                    disc_start=2, workers=0, log_every=1, ckpt_every=100, sample_every=100, num_samples=2,
                    stats_images=8, stats_batch_size=4, mask_ratio=0.5, residual_dropout=0.0, rope_rescale=2.0,
                    batch_stats="global", seed=5)

if __name__ == "__main__":
    torch.set_num_threads(1)
    extra = {k: type(DDP_SETTINGS[k])(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    train_ae("sample:photos", sys.argv[1], model="test_tiny", progress=False, **{**DDP_SETTINGS, **extra})
