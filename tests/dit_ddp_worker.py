"""torchrun worker for tests/test_dit_train.py: trains the tiny DiT with DDP (gloo) and saves the result."""

import sys

from _dit_helpers import MemCache, tiny_model

from svgfeat.generation.train import train_dit

out = sys.argv[1]
train_dit(MemCache(), tiny_model(), out, steps=3, batch_size=8, lr=1e-3, ema_decay=0.5, seed=1,
          log_every=1, ckpt_every=100, progress=False, hflip=True)
