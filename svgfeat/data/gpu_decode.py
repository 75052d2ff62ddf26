"""Batched JPEG decoding on the encoder's device (nvJPEG on CUDA, libjpeg-turbo on CPU) that follows the
requested transform preset exactly.

Used by ``extract(..., gpu_decode=True)``: workers only read file bytes; decoding, the preset's geometry
(``svg``: BOX halving + bicubic short side + centre crop; ``center-crop``: bicubic to floor(S/crop_pct) +
centre crop; ``resize``: bicubic to S x S; ``none``) and the normalisation run on the device. Resampling
reproduces Pillow's separable filters bit for bit: the same filter weights quantised to Pillow's 22-bit
fixed point, applied as BANDED int32 filters (per (in, out, filter): a window start per output pixel and
K = 2*ceil(support)+1 weights, computed once and kept on each device) with Pillow's int32 sums and its
rounding after each pass, the passes in the order the installed Pillow uses (Pillow 13 chooses it per
geometry: :func:`pillow_vertical_first` asks it once per geometry). A batch's images are grouped by size and each group is
resized as one tensor. Cost per pass: K multiply-adds per output pixel (v1 used dense float64 [out, in]
matrices: ``in`` multiply-adds per output pixel, re-uploaded on every call). So on CPU the result equals the PIL pipeline; on CUDA the only
difference left is the JPEG decoder (nvJPEG's IDCT/upsampling). JPEGs that Pillow would treat differently
(EXIF rotation, CMYK) are decoded by the workers with PIL instead (:func:`device_decodable`). The
manifest records ``decoder: "device"`` and ``resample`` in the transform.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD

PRECISION_BITS = 32 - 8 - 2  # Pillow's 8-bit resampling fixed point
RESAMPLE_TAG = "pil-banded-int32-v2"  # recorded in the manifest's transform: bump when the arithmetic changes
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def read_bytes(path) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def is_jpeg(blob: torch.Tensor) -> bool:
    return blob.numel() > 3 and int(blob[0]) == 0xFF and int(blob[1]) == 0xD8


def _exif_orientation(seg: bytes) -> int | None:
    if not seg.startswith(b"Exif\0\0") or len(seg) < 14:
        return None
    t = seg[6:]
    end = "<" if t[:2] == b"II" else ">" if t[:2] == b"MM" else None
    if end is None:
        return None
    import struct

    try:
        (ifd,) = struct.unpack(end + "I", t[4:8])
        (n,) = struct.unpack(end + "H", t[ifd:ifd + 2])
        for k in range(n):
            e = t[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, typ = struct.unpack(end + "HH", e[:4])
            if tag == 0x0112:
                return struct.unpack(end + "H", e[8:10])[0] if typ == 3 else None
    except (struct.error, IndexError):
        return None
    return None


def device_decodable(blob: torch.Tensor) -> bool:
    """True for a JPEG the device decoder turns into the same picture PIL would: 1 or 3 components and
    no EXIF rotation (others go through PIL on the workers)."""
    if not is_jpeg(blob):
        return False
    b = blob.numpy().tobytes() if blob.numel() < 1 << 16 else blob[: 1 << 16].numpy().tobytes()
    pos, comps, orient = 2, None, None
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            return False
        m = b[pos + 1]
        if m == 0xFF:
            pos += 1
            continue
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            pos += 2
            continue
        ln = int.from_bytes(b[pos + 2:pos + 4], "big")
        seg = b[pos + 4:pos + 2 + ln]
        if m == 0xE1 and orient is None:
            orient = _exif_orientation(seg)
        elif m in _SOF and len(seg) >= 6:
            comps = seg[5]
        elif m == 0xDA:
            break
        pos += 2 + ln
    return comps in (1, 3) and orient in (None, 1)


# ------------------------------------------------------------------------------------ Pillow resampling
def _box(x):
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _bicubic(x, a=-0.5):
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


FILTERS = {"box": (_box, 0.5), "bicubic": (_bicubic, 2.0)}


@lru_cache(maxsize=512)
def _band(in_size: int, out_size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` as a band: (first input index int64 [out],
    fixed-point weights int32 [out, K]) with K = the filter's window (zero weights past each row's end)."""
    filt, base_support = FILTERS[name]
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = base_support * fscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C (int) truncation, then clamp
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    k = np.arange(ksize)[None, :]
    valid = k < xmax[:, None]
    ss = 1.0 / fscale  # Pillow multiplies by the reciprocal (dividing differs in the last bit: BOX edges flip)
    w = filt((xmin[:, None] + k - center[:, None] + 0.5) * ss) * valid
    ww = w.sum(1, keepdims=True)
    w = np.where(ww != 0, w / np.where(ww == 0, 1, ww), w)
    q = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
    q = np.where(valid, q, 0).astype(np.int32)
    # a window never needs to start past in_size - K (weights past xmax are 0): shift it left so every
    # gathered index is inside the image, moving the weights right by the same amount
    start = np.minimum(xmin, max(in_size - ksize, 0))
    shift = xmin - start
    qs = np.zeros((out_size, ksize), np.int32)
    for d in np.unique(shift):
        r = shift == d
        qs[r, d:] = q[r, :ksize - d]
    return start, qs


_DEVICE_BANDS: OrderedDict = OrderedDict()  # (in, out, filter, device) -> (gather index [out, K], weights)
_DEVICE_BANDS_MAX = 512


def device_band(in_size: int, out_size: int, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The band of (in_size -> out_size, filter) on ``device``: computed once, kept (LRU, 512 entries)."""
    key = (in_size, out_size, name, str(torch.device(device)))
    hit = _DEVICE_BANDS.get(key)
    if hit is not None:
        _DEVICE_BANDS.move_to_end(key)
        return hit
    start, q = _band(in_size, out_size, name)
    k = min(q.shape[1], in_size)
    idx = torch.from_numpy(start[:, None] + np.arange(k)[None, :]).to(device)
    w = torch.from_numpy(np.ascontiguousarray(q[:, :k])).to(device)
    _DEVICE_BANDS[key] = (idx, w)
    if len(_DEVICE_BANDS) > _DEVICE_BANDS_MAX:
        _DEVICE_BANDS.popitem(last=False)
    return idx, w


def _round8(s: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8``: (sum + half) >> PRECISION_BITS, clamped to 0..255 (int32 in, uint8 out)."""
    return torch.bitwise_right_shift(s.add_(1 << (PRECISION_BITS - 1)), PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def _pass(x: torch.Tensor, in_size: int, out_size: int, name: str, dim: int) -> torch.Tensor:
    """One separable pass along ``dim`` (-1 horizontal, -2 vertical) of uint8 images [..., H, W].

    The filtered axis is moved to the front (one contiguous uint8 copy), so each of the K taps gathers whole
    contiguous rows (``index_select`` on dim 0) and adds ``rows * weight`` into an int32 sum: K
    multiply-adds per output value, no [.., out, K] intermediate. Returns uint8 (Pillow's 8-bit temporary
    image between the passes)."""
    idx, w = device_band(in_size, out_size, name, x.device)
    xt = x.movedim(dim, 0).contiguous()
    rest = xt.shape[1:]
    xt = xt.reshape(in_size, -1)
    acc = None
    for j in range(w.shape[1]):
        t = torch.mul(xt.index_select(0, idx[:, j]), w[:, j, None])  # uint8 * int32 -> int32
        acc = t if acc is None else acc.add_(t)
    return _round8(acc).reshape(out_size, *rest).movedim(0, dim)


def _two_pass(img, w, h, W, H, name, vertical_first: bool):
    if vertical_first:
        return _pass(_pass(img, h, H, name, -2), w, W, name, -1)
    return _pass(_pass(img, w, W, name, -1), h, H, name, -2)


@lru_cache(maxsize=4096)
def pillow_vertical_first(w: int, h: int, W: int, H: int, name: str) -> bool:
    """Whether the installed Pillow runs the vertical pass first for this resize (both passes needed).

    Pillow <= 12 always runs the horizontal pass first. Pillow 13 picks the order from the sizes (a rule
    of its C code that is not part of its API), and the intermediate rounding makes the order visible in
    the pixels. So on Pillow >= 13 we ask Pillow once per geometry: a deterministic noise image of this
    size is resized by Pillow and by both of our orders on the CPU; the order that reproduces Pillow wins.
    """
    from PIL import Image

    if int(Image.__version__.split(".")[0]) < 13:
        return False
    g = np.random.default_rng([w, h, W, H])
    probe = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(probe).resize((W, H), resample=Image.BOX if name == "box" else Image.BICUBIC))
    x = torch.from_numpy(probe).permute(2, 0, 1)
    ref_t = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
    if torch.equal(_two_pass(x, w, h, W, H, name, False), ref_t):
        return False
    if torch.equal(_two_pass(x, w, h, W, H, name, True), ref_t):
        return True
    raise AssertionError(f"Pillow {Image.__version__}'s resize {w}x{h}->{W}x{H} ({name}) matches neither pass order")


def pil_resize(img: torch.Tensor, size_wh: tuple[int, int], name: str) -> torch.Tensor:
    """Pillow ``Image.resize(size_wh, resample=BOX|BICUBIC)`` of uint8 images [..., 3, H, W],
    with Pillow's int32 fixed-point arithmetic: one pass, round/clip, the other pass, round/clip, in the
    order the installed Pillow uses (:func:`pillow_vertical_first`)."""
    h, w = img.shape[-2:]
    W, H = size_wh
    if W != w and H != h:
        return _two_pass(img, w, h, W, H, name, pillow_vertical_first(w, h, W, H, name))
    if W != w:
        img = _pass(img, w, W, name, -1)
    if H != h:
        img = _pass(img, h, H, name, -2)
    return img


def apply_preset(img: torch.Tensor, transform) -> torch.Tensor:
    """uint8 [..., 3, H, W] (one image or a batch of one size) on any device -> uint8 [..., 3, S, S], the
    geometry of ``transform.to_pil``."""
    x = img
    h, w = x.shape[-2:]
    size = transform.size
    if transform.preset == "svg":
        while min(w, h) >= 2 * size:
            w, h = w // 2, h // 2
            x = pil_resize(x, (w, h), "box")
        scale = size / min(w, h)
        w, h = round(w * scale), round(h * scale)
        x = pil_resize(x, (w, h), "bicubic")
        left, top = (w - size) // 2, (h - size) // 2
        x = x[..., top:top + size, left:left + size]
    elif transform.preset == "center-crop":
        short = int(math.floor(size / transform.crop_pct))
        scale = short / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        x = pil_resize(x, (w, h), "bicubic")
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        x = x[..., top:top + size, left:left + size]
    elif transform.preset == "resize":
        x = pil_resize(x, (size, size), "bicubic")
    elif w % 16 or h % 16:
        raise ValueError(f"preset 'none' needs sides that are multiples of 16, got {(w, h)}")
    if transform.hflip:
        x = x.flip(-1)
    return x


def decode_transform(blobs: list[torch.Tensor], transform, device) -> tuple[torch.Tensor, dict[int, str]]:
    """JPEG byte tensors -> (normalised float32 [n_ok, 3, S, S] on ``device``, {index: failure reason}).

    One batched decode call; the decoded images are grouped by size and each group is resized as one
    batch (the geometry depends only on the size). Call inside the caller's device scope (the extraction
    engine's :class:`~svgfeat.device_staging.DeviceStage`): every op runs on the current stream."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    imgs, failed = {}, {}
    try:
        imgs = dict(enumerate(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)))
    except RuntimeError:  # one bad file fails the whole batch: decode one by one
        for i, b in enumerate(blobs):
            try:
                imgs[i] = decode_jpeg(b, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as e:
                failed[i] = f"truncated: device JPEG decode failed ({str(e).splitlines()[0][:120]})"
    by_size: dict = {}
    for i in sorted(imgs):
        by_size.setdefault(tuple(imgs[i].shape[-2:]), []).append(i)
    done = {}
    for ids in by_size.values():
        try:
            y = apply_preset(torch.stack([imgs[i] for i in ids]), transform)
        except ValueError as e:
            failed.update({i: f"unreadable: {e}" for i in ids})
            continue
        done.update(zip(ids, y))
    if not done:
        return torch.empty(0, 3, transform.size, transform.size, device=device), failed
    x = torch.stack([done[i] for i in sorted(done)]).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std), failed  # the same float32 ops, in place, as transforms.normalize
