"""Batched JPEG decoding + resize on the encoder's device (nvJPEG on CUDA, libjpeg on CPU).

Used by ``extract(..., gpu_decode=True)``: workers only read file bytes; decoding, the short-side
bicubic resize (antialiased), the centre crop and the normalisation run as batched tensor ops. The
result is close to, not bit-equal with, the PIL pipeline; the manifest records ``decoder: "device"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .transforms import IMAGENET_MEAN, IMAGENET_STD


def read_bytes(path) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def is_jpeg(blob: torch.Tensor) -> bool:
    return blob.numel() > 3 and int(blob[0]) == 0xFF and int(blob[1]) == 0xD8


def decode_resize(blobs: list[torch.Tensor], size: int, device) -> tuple[torch.Tensor, list[int]]:
    """JPEG byte tensors -> (normalised float32 [n_ok, 3, S, S] on ``device``, indices that failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    ok, failed = [], []
    try:
        imgs = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
        ok = list(range(len(blobs)))
    except RuntimeError:  # one bad file fails the whole batch: decode one by one
        imgs = []
        for i, b in enumerate(blobs):
            try:
                imgs.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=device))
                ok.append(i)
            except RuntimeError:
                failed.append(i)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    for img in imgs:  # img: [3, H, W] uint8
        x = img.unsqueeze(0).float() / 255.0
        h, w = x.shape[-2:]
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[..., top:top + size, left:left + size])
    x = torch.cat(out) if out else torch.empty(0, 3, size, size, device=device)
    return (x - mean) / std, failed
