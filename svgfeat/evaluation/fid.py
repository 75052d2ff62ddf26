"""FID: the Inception-v3 feature network and the Frechet distance (library side of ``svgfeat fid``).

Features are the 2048-d pool3 activations of the FID Inception-v3 (TF 2015-12-05 weights as converted by
pytorch-fid, file ``pt_inception-2015-12-05-6726825d.pth``), with a bilinear resize to 299 inside the
network and input scaled [0,1] -> [-1,1]. Weights are never downloaded: pass ``inception=PATH`` or put
the file in ``$TORCH_HOME/hub/checkpoints/``. Samples are a folder of images, or an ``.npz`` with images
(``arr_0`` uint8 [N,H,W,3], ADM format) or with precomputed ``mu``/``sigma``. The reference is an ``.npz``
with ``mu`` [2048] and ``sigma`` [2048,2048] (e.g. ADM's VIRTUAL_imagenet256_labeled.npz).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


# ------------------------------------------------------------------------------------------ FID math
def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """feats [N, D] -> (mu [D] float64, sigma [D, D] float64, unbiased as numpy.cov)."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DataError(f"need at least 2 feature vectors [N, D] for FID statistics, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr(sqrtm(s1 @ s2)) for symmetric PSD s1, s2 (float64, torch LAPACK: honours torch's thread count).

    s1 s2 has the eigenvalues of the symmetric PSD matrix R^T s2 R for any R with R R^T = s1 (Cholesky
    factor when s1 or s2 is positive definite, else the eigen square root), so no complex round-off
    appears, unlike a general sqrtm.
    """
    import torch

    a, b = torch.as_tensor(np.asarray(s1, np.float64)), torch.as_tensor(np.asarray(s2, np.float64))
    r = None
    for x, y in ((a, b), (b, a)):
        chol, info = torch.linalg.cholesky_ex(x)
        if int(info) == 0:
            r, other = chol, y
            break
    if r is None:
        w, u = torch.linalg.eigh(a)
        r, other = (u * w.clamp_min(0).sqrt()) @ u.T, b
    ev = torch.linalg.eigvalsh(r.T @ other @ r)
    return float(ev.clamp_min(0).sqrt().sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1-mu2||^2 + Tr(s1) + Tr(s2) - 2 Tr(sqrtm(s1 s2)) (float64)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ConfigError(f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                               f"sigma {s1.shape} vs {s2.shape}")
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


# ------------------------------------------------------------------------------------------ Inception
def build_fid_inception():
    """The FID Inception-v3 (pytorch-fid layout: torchvision keys, fc 1008, FID-specific A/C/E blocks)."""
    import torch
    import torch.nn.functional as F
    from torchvision.models import inception as tvi

    def _pool_avg(x):  # TF-style average pooling without the zero padding in the average
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class A(tvi.InceptionA):
        def forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_pool_avg(x))], 1)

    class C(tvi.InceptionC):
        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
                bd = m(bd)
            return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_pool_avg(x))], 1)

    class E(tvi.InceptionE):
        def __init__(self, in_channels, max_pool: bool):
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _pool_avg(x)
            return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool)], 1)

    net = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False, transform_input=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, pool_features=32), A(256, pool_features=64), A(288, 64)
    net.Mixed_6b = C(768, channels_7x7=128)
    net.Mixed_6c, net.Mixed_6d = C(768, channels_7x7=160), C(768, channels_7x7=160)
    net.Mixed_6e = C(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = E(1280, max_pool=False), E(2048, max_pool=True)
    return net.eval()


def find_inception_weights(path=None) -> Path:
    """--inception PATH, else $TORCH_HOME/hub/checkpoints/<file> (default TORCH_HOME ~/.cache/torch)."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"FID Inception weights: file not found: {p} (--inception)")
        return p
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    p = home / "hub" / "checkpoints" / INCEPTION_FILE
    if not p.is_file():
        raise CheckpointError(
            f"FID Inception weights not found. Put pytorch-fid's {INCEPTION_FILE} (from "
            f"github.com/mseitzer/pytorch-fid releases, fid_weights) at {p} or pass --inception PATH; "
            "svgfeat never downloads weights.")
    return p


class InceptionFeatures:
    """images float [B,3,H,W] in [0,1] -> pool3 features float64 [B,2048]."""

    def __init__(self, weights, device="cpu"):
        import torch

        from .. import checkpoints as ck

        self.net = build_fid_inception()
        sd = ck.load_file(weights)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        own = self.net.state_dict()
        sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
        for k in own:  # files converted before BN counted its batches lack these buffers
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = torch.zeros((), dtype=torch.long)
        ck.load_strict(self.net, sd, "FID Inception-v3", str(weights))
        self.device = torch.device(device)
        self.net.to(self.device)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        n = self.net
        with torch.no_grad():
            x = F.interpolate(x.to(self.device, torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
            x = 2 * x - 1
            for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                         "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                         "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                x = getattr(n, name)(x)
            return F.adaptive_avg_pool2d(x, 1).flatten(1).double().cpu().numpy()


def iter_images(source, batch_size: int):
    """Yield float [b,3,H,W] in [0,1] from a folder of images or an .npz (``arr_0`` uint8 [N,H,W,3])."""
    import torch
    from PIL import Image

    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXT)
        if not files:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXT))}) in {p}")
        for i in range(0, len(files), batch_size):
            arrs = []
            for f in files[i:i + batch_size]:
                try:
                    arrs.append(np.asarray(Image.open(f).convert("RGB")))
                except OSError as e:
                    raise DataError(f"cannot read image {f}: {e}") from None
            while arrs:  # consecutive images of one size go together (the network resizes to 299)
                k = next((j for j, a in enumerate(arrs) if a.shape != arrs[0].shape), len(arrs))
                yield torch.from_numpy(np.stack(arrs[:k])).permute(0, 3, 1, 2).float() / 255
                arrs = arrs[k:]
        return
    files, got = read_npz(p, ["arr_0"])
    if "arr_0" not in got:
        raise DataError(f"{p} has no 'arr_0' images (keys: {files})")
    arr = got["arr_0"]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"{p}: arr_0 must be [N,H,W,3], got {arr.shape}")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    for i in range(0, len(arr), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(arr[i:i + batch_size])).permute(0, 3, 1, 2).float() / scale


def read_npz(path, keys) -> tuple[list[str], dict]:
    """(all keys, {key: array} for the wanted ``keys`` present) of an .npz; a one-line DataError naming the
    file when it is not a readable .npz archive (empty, truncated, pickled, a bare .npy, ...). Never unpickles."""
    import zipfile

    from ..regular_files import check_regular

    bad = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError)
    check_regular(path, "statistics file", error=DataError)  # a FIFO would block np.load
    try:
        d = np.load(path, allow_pickle=False)
    except bad as e:
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(d, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected an .npz archive, got a single .npy array")
    try:
        with d:
            return list(d.files), {k: np.asarray(d[k]) for k in keys if k in d.files}
    except bad as e:
        raise DataError(f"{path}: corrupt .npz archive ({type(e).__name__}: {e})") from None


def load_ref_stats(path) -> tuple[np.ndarray, np.ndarray]:
    files, got = read_npz(path, ["mu", "sigma"])
    if len(got) != 2:
        raise DataError(f"{path} has no 'mu'/'sigma' (keys: {files}); expected ADM reference stats")
    return got["mu"], got["sigma"]


def sample_stats(source, extractor_fn, batch_size: int = 50, progress: bool = False):
    """(mu, sigma, n) of a folder/.npz; an .npz holding mu/sigma is used as is (n = None)."""
    p = Path(source)
    if p.is_file() and p.suffix == ".npz":
        _, got = read_npz(p, ["mu", "sigma"])
        if len(got) == 2:
            return got["mu"], got["sigma"], None
    feats = []
    it = iter_images(p, batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="inception", unit="batch", leave=False)
    for x in it:
        feats.append(extractor_fn()(x))
    f = np.concatenate(feats)
    mu, sigma = gaussian_stats(f)
    return mu, sigma, len(f)


def fid_score(samples, ref, inception=None, batch_size: int = 50, device="cpu", save_stats=None,
              progress: bool = False, overwrite: bool = False) -> dict:
    """FID between ``samples`` (image folder, ``.npz`` images or ``.npz`` mu/sigma) and ``ref`` (``.npz`` mu/sigma).

    The Inception weights are located (and missing ones reported) before any image is read.
    ``save_stats``: also write the samples' mu/sigma there (.npz added); an existing file svgfeat did not write
    is refused before any work unless ``overwrite``.
    Returns {"fid": float, "n": number of sample images or None for precomputed statistics}."""
    from ..atomic import atomic_file, check_output

    if save_stats:
        save_stats = check_output(save_stats if str(save_stats).endswith(".npz") else f"{save_stats}.npz",
                                  overwrite, "--save-stats file")
    mu_r, sigma_r = load_ref_stats(ref)
    p = Path(samples)
    precomputed = False
    if p.is_file() and p.suffix == ".npz":
        files, _ = read_npz(p, [])
        precomputed = {"mu", "sigma"} <= set(files)
    holder = {} if precomputed else {"path": find_inception_weights(inception)}

    def extractor():
        if "x" not in holder:
            holder["x"] = InceptionFeatures(holder["path"], device)
        return holder["x"]

    mu, sigma, n = sample_stats(samples, extractor, batch_size, progress=progress)
    if save_stats:
        with atomic_file(save_stats) as f:
            np.savez(f, mu=mu, sigma=sigma)
    return {"fid": frechet_distance(mu, sigma, mu_r, sigma_r), "n": n}
