"""Shared data for the retrieval tests (not a test module): real photos, tiny-encoder caches, clustered vectors."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "brick")
_MEMO: dict = {}


def photo_folder() -> Path:
    """8 scikit-image sample photos saved as PNG/JPEG in a temporary folder (made once per session)."""
    if "folder" not in _MEMO:
        import skimage.data
        from PIL import Image

        d = Path(tempfile.mkdtemp(prefix="svgfeat-retrieval-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        (d / "imgs").mkdir()
        for i, name in enumerate(PHOTOS):
            a = getattr(skimage.data, name)()
            img = Image.fromarray(a if a.dtype == np.uint8 else (a * 255).astype(np.uint8)).convert("RGB")
            img.save(d / "imgs" / f"{name}.{'png' if i % 2 == 0 else 'jpg'}", quality=95)
        _MEMO["folder"] = d
    return _MEMO["folder"]


def tiny_cache(model: str = "test_tiny", alignment: str = "batch"):
    """A cache of the photos made with ``svgfeat.extract(folder, out, model=..., size=64)`` (once per model)."""
    key = ("cache", model, alignment)
    if key not in _MEMO:
        import svgfeat

        groups = ("pooled", "cls", "dino", "latent") if model == "test_tiny" else ("pooled", "cls", "dino")
        root = photo_folder()
        _MEMO[key] = svgfeat.extract(root / "imgs", root / f"cache_{model}_{alignment}", model=model, size=64,
                                     groups=groups, alignment=alignment, progress=False)
    return _MEMO[key]


def clustered(n: int, d: int, clusters: int = 500, spread: float = 0.7, seed: int = 0) -> np.ndarray:
    """Gaussian-mixture vectors float32 [n, d]: ``clusters`` centres ~ N(0, 1), points = centre + spread·N(0, 1).

    Realistic for image features (tight semantic clusters); uniform random high-d data has no neighbourhood
    structure and gives poor recall for any ANN method."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    lab = rng.integers(0, clusters, n)
    return centres[lab] + spread * rng.standard_normal((n, d)).astype(np.float32)


def brute_force(X: np.ndarray, Q: np.ndarray, k: int, metric: str = "cosine"):
    """Exact numpy top-k (float64): (D [nq, k], I [nq, k])."""
    X64, Q64 = X.astype(np.float64), Q.astype(np.float64)
    if metric == "cosine":
        X64 = X64 / np.linalg.norm(X64, axis=1, keepdims=True)
        Q64 = Q64 / np.linalg.norm(Q64, axis=1, keepdims=True)
        S = Q64 @ X64.T
        nbr = np.argsort(-S, axis=1, kind="stable")[:, :k]
    else:
        S = ((Q64[:, None, :] - X64[None]) ** 2).sum(-1)
        nbr = np.argsort(S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, nbr, 1), nbr


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run_chromium(url: str, *extra: str, timeout: int = 90) -> subprocess.CompletedProcess:
    """Headless Chromium against ``url`` with a throw-away profile (``--dump-dom`` or ``--screenshot=...``)."""
    with tempfile.TemporaryDirectory(prefix="svgfeat-chromium-") as prof:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={prof}", *extra, url],
                              capture_output=True, text=True, timeout=timeout)
