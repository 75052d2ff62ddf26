"""Reconstruction metrics: PSNR, SSIM (Gaussian window), LPIPS and rFID, plus image sheets.

Conventions (all per image, then averaged over the dataset):
- images are compared in [0, 1] after quantisation to 8 bits (the reconstruction is clamped to [-1, 1]
  and rounded as it would be when saved as PNG), ``data_range`` 1;
- PSNR = 10 log10(1 / MSE) over all pixels and channels of one image (capped at 100 dB for MSE 0);
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncate 3.5), K1 0.01, K2 0.03,
  population covariances, mean over the valid region (5 px border removed) and the 3 channels. This is
  ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)``;
- LPIPS(VGG) on the [-1, 1] images;
- rFID: FID between Inception pool3 statistics of the originals and of the reconstructions (needs the
  FID Inception weights, see ``svgfeat fid``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03


def quantize01(x_pm1: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> [0, 1] float on the 8-bit grid (clamped, rounded)."""
    return torch.round((x_pm1.float().clamp(-1, 1) + 1) * 127.5) / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """a, b [B, C, H, W] -> PSNR [B] in dB (100 where identical)."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    out = 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))
    return torch.where(mse == 0, torch.full_like(out, 100.0), out)


def gaussian_kernel1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE, dtype=torch.float64) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: [N, C, H, W] -> [N, C, H-2r, W-2r]."""
    C = x.shape[1]
    kh = k.view(1, 1, -1, 1).expand(C, 1, -1, 1).to(x)
    kw = k.view(1, 1, 1, -1).expand(C, 1, 1, -1).to(x)
    return F.conv2d(F.conv2d(x, kh, groups=C), kw, groups=C)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """a, b [B, C, H, W] (H, W > 10) -> SSIM [B] (float64), Gaussian window, valid region, channel mean."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim expects two [B,C,H,W] tensors of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    k = gaussian_kernel1d(sigma)
    if min(a.shape[-2:]) < k.numel():
        raise ValueError(f"images must be at least {k.numel()} px per side for SSIM, got {tuple(a.shape[-2:])}")
    x, y = a.double(), b.double()
    ux, uy = _filter_valid(x, k), _filter_valid(y, k)
    uxx, uyy, uxy = _filter_valid(x * x, k), _filter_valid(y * y, k), _filter_valid(x * y, k)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def to_uint8_hwc(x01: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3]."""
    return (x01.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_sheet(pairs: list[tuple[torch.Tensor, torch.Tensor]] | tuple, path, per_row: int = 4, pad: int = 2) -> Path:
    """Side-by-side sheet: originals and reconstructions [N, 3, H, W] in [0, 1] -> PNG grid of
    (original | reconstruction) cells, ``per_row`` cells per row."""
    from PIL import Image

    if isinstance(pairs, tuple):
        pairs = [pairs]
    orig = torch.cat([p[0] for p in pairs]).float().cpu()
    rec = torch.cat([p[1] for p in pairs]).float().cpu()
    n, _, h, w = orig.shape
    cells = torch.cat([orig, torch.ones(n, 3, h, pad), rec], dim=3)  # [n, 3, h, 2w+pad]
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    cw = cells.shape[-1]
    sheet = torch.ones(3, rows * (h + pad) + pad, cols * (cw + 3 * pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + c * (cw + 3 * pad)
        sheet[:, y0:y0 + h, x0:x0 + cw] = cells[i]
    from ..atomic import atomic_file

    with atomic_file(path, durable=False) as f:  # whole or absent, marked as svgfeat's
        Image.fromarray(to_uint8_hwc(sheet[None])[0]).save(f, format="PNG")
    return Path(path)


class ReconMetrics:
    """Accumulates per-image PSNR / SSIM / LPIPS and (optionally) Inception features for rFID.

    ``update(x, x_rec)`` with x, x_rec [B, 3, H, W] in [-1, 1]; ``compute()`` -> dict of means.
    """

    def __init__(self, lpips=None, inception=None):
        self.lpips, self.inception = lpips, inception
        self.values: dict[str, list] = {"psnr": [], "ssim": [], "lpips": []}
        self.feats_real: list[np.ndarray] = []
        self.feats_rec: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_rec: torch.Tensor) -> dict:
        a, b = quantize01(x), quantize01(x_rec)
        batch = {"psnr": psnr(a, b), "ssim": ssim(a, b)}
        if self.lpips is not None:
            dev = next(self.lpips.parameters()).device
            batch["lpips"] = self.lpips((a * 2 - 1).to(dev), (b * 2 - 1).to(dev)).flatten().double().cpu()
        for k, v in batch.items():
            self.values[k].extend(v.cpu().tolist())
        if self.inception is not None:
            self.feats_real.append(self.inception(a))
            self.feats_rec.append(self.inception(b))
        return {k: float(v.mean()) for k, v in batch.items()}

    def compute(self) -> dict:
        out = {"n": len(self.values["psnr"])}
        for k, v in self.values.items():
            if v:
                out[k] = float(np.mean(v))
        if self.feats_real:
            from ..evaluation.fid import frechet_distance, gaussian_stats

            fr, fx = np.concatenate(self.feats_real), np.concatenate(self.feats_rec)
            if len(fr) >= 2:
                out["rfid"] = frechet_distance(*gaussian_stats(fx), *gaussian_stats(fr))
        return out


@torch.no_grad()
def evaluate_reconstruction(enc, dataset, size: int = 256, batch_size: int = 32, device="cpu", lpips=None,
                            inception=None, limit: int | None = None, sheet=None, sheet_images: int = 8,
                            progress: bool = False) -> dict:
    """Centre-crop ``dataset`` images to ``size``, encode + decode with ``enc`` (eval mode, its alignment)
    and return mean PSNR / SSIM / LPIPS (and rFID with ``inception``); writes a sheet PNG if ``sheet``."""
    from ..errors import ConfigError
    from .ae_data import AECropDataset, to_model_inputs

    if enc.decoder is None:
        raise ConfigError("this encoder has no pixel decoder: pass an SVG autoencoder checkpoint (--svg)")
    data = AECropDataset(dataset, size, cache_bytes=0)
    n = len(data) if limit is None else min(limit, len(data))
    metrics = ReconMetrics(lpips, inception)
    shown: list[tuple[torch.Tensor, torch.Tensor]] = []
    rng = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        rng = tqdm(rng, desc="eval-recon", unit="batch")
    enc.eval()
    for i in rng:
        u8 = torch.stack([data[(j, None)] for j in range(i, min(i + batch_size, n))])
        x, xn = to_model_inputs(u8, device)
        x_rec = enc.decode(enc.encode(xn).latent).float()
        metrics.update(x, x_rec)
        if sheet is not None and sum(len(p[0]) for p in shown) < sheet_images:
            k = sheet_images - sum(len(p[0]) for p in shown)
            shown.append((quantize01(x[:k]).cpu(), quantize01(x_rec[:k]).cpu()))
    out = metrics.compute()
    if sheet is not None and shown:
        out["sheet"] = str(save_sheet(shown, sheet))
    return out
