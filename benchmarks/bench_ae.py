"""AE training step: svgfeat (frozen DINOv3 under no_grad) vs the official pattern (DINOv3 recomputed with
autograd enabled and its parameters requiring grad, so every backward also computes DINOv3 weight gradients
that are never applied).

Both steps do the same work otherwise: residual ViT + masking + alignment + decoder, L1 + LPIPS + adaptive
weight + PatchGAN hinge loss, AE update then discriminator update (the adversarial phase, i.e. after
disc_start). Random weights: timing only.

Default (CPU-sized): full DINOv3 ViT-S/16+ and residual ViT at 128 px, a reduced decoder (ch 32, 1 res block),
LPIPS trunk / discriminator at 1/8 width. ``--full`` uses the released sizes (decoder ch 128, full VGG16 LPIPS,
ndf 64): meant for a GPU, where the saving is a smaller share of the step.

    python benchmarks/bench_ae.py [--size 128] [--batch 2] [--steps 3] [--threads 1] [--full] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def build(size: int, full: bool, device):
    from svgfeat.training.ae_model import autoencoder_config, build_autoencoder, trainable_parameters
    from svgfeat.training.discriminator import build_discriminator
    from svgfeat.training.losses import AELoss
    from svgfeat.training.lpips import build_lpips

    cfg = autoencoder_config("vit_small_plus", size)
    cfg["name"] = "test_bench"  # random DINOv3 weights are fine for timing
    if not full:
        cfg["decoder"].update(ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[])
    enc, _ = build_autoencoder(cfg, None, device)
    lp = build_lpips(pretrained=False, width_div=1 if full else 8, device=device)
    disc = build_discriminator(64 if full else 8, device=device)
    loss = AELoss(lp, disc, disc_start=0)
    params = trainable_parameters(enc)
    opt_ae = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
    return enc, loss, opt_ae, opt_d


def make_step(enc, loss, opt_ae, opt_d, baseline: bool):
    from svgfeat.models.align import scalar_stats
    from svgfeat.training.ae_model import training_latent

    if baseline:
        enc.backbone.requires_grad_(True)  # official: DINO is in no optimizer but its parameters require grad

    def latent(xn, keep):
        if not baseline:
            return training_latent(enc, xn, keep)
        dino = enc.backbone(xn).patch  # autograd enabled: activations kept, weight gradients computed
        r = enc.residual(xn)
        k = keep.to(r.dtype).view(-1, 1, 1, 1)
        r = r * k + enc.mask_token.unsqueeze(-1) * (1 - k)
        mu_d, s_d = scalar_stats(dino)
        mu_r, s_r = scalar_stats(r)
        return torch.cat([dino, (r - mu_r) / (s_r + 1e-6) * s_d + mu_d], dim=1)

    def step(x, xn, keep):
        enc.train()
        z = latent(xn, keep)
        x_rec = enc.decoder(z)
        g, _ = loss.generator_loss(x, x_rec, enc.decoder.conv_out.weight, step=1)
        opt_ae.zero_grad(set_to_none=True)
        g.backward()
        opt_ae.step()
        d, _ = loss.discriminator_loss(x, x_rec.detach(), step=1)
        opt_d.zero_grad(set_to_none=True)
        d.backward()
        opt_d.step()
        for p in enc.backbone.parameters():
            p.grad = None  # the official code lets them accumulate; dropping them keeps memory flat

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    print("command: python benchmarks/bench_ae.py " + " ".join(sys.argv[1:]))
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(a.batch, 3, a.size, a.size, generator=g) * 2 - 1).to(dev)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    xn = ((x + 1) / 2 - mean) / std
    keep = torch.tensor([True, False] * (a.batch // 2) + [True] * (a.batch % 2), device=dev)
    times = {}
    for name, baseline in (("svgfeat (no_grad DINOv3)", False), ("official (DINOv3 with grad)", True)):
        torch.manual_seed(0)
        enc, loss, opt_ae, opt_d = build(a.size, a.full, dev)
        step = make_step(enc, loss, opt_ae, opt_d, baseline)
        step(x, xn, keep)  # warm-up
        ts = []
        for _ in range(a.steps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(x, xn, keep)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        times[name] = statistics.median(ts)
        print(f"{name:30s} {times[name] * 1000:8.1f} ms/step (median of {a.steps}, batch {a.batch}, {a.size} px)")
    base, ours = times["official (DINOv3 with grad)"], times["svgfeat (no_grad DINOv3)"]
    print(f"ratio official / svgfeat: {base / ours:.2f}x")


if __name__ == "__main__":
    main()
