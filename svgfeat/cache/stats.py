"""Exact per-channel statistics of a cache group in one streaming pass (float64, order-independent of batching).

Also the fixed-alignment statistics when the cache holds ``dino`` and ``residual_raw``, and the
official ``dinov3_sp_stats.pt`` format ({"dinov3_sp_mean": [1,1,C], "dinov3_sp_std": [1,1,C]}).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import CacheError, CheckpointError
from .atomic import write_json_atomic
from .lock import cache_lock
from .reader import open_cache


class ChannelMoments:
    """Streaming per-channel count / sum / sum of squares in float64 over [n, C, ...] arrays."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def update(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64)
        c = a.shape[1]
        flat = np.moveaxis(a, 1, 0).reshape(c, -1)
        s, ss = flat.sum(1), np.einsum("ij,ij->i", flat, flat)
        self.n += flat.shape[1]
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s / self.n
        var = (self.ss - self.n * mean * mean) / max(self.n - 1, 1)
        return mean, np.sqrt(np.clip(var, 0, None))


def compute_stats(cache, groups=("latent",), batch_size: int = 2048, progress: bool = False) -> dict:
    """Per-channel mean/std (unbiased) for each group with a channel axis; saved to ``stats.json``."""
    from tqdm.auto import tqdm

    c = open_cache(cache)
    groups = [g for g in groups if g in c.groups]
    if not groups:
        raise CacheError(f"none of the requested groups are in {c.root} (it has {sorted(c.groups)})")
    want = list(groups)
    fixed = "dino" in c.groups and "residual_raw" in c.groups
    if fixed:
        want = list(dict.fromkeys(want + ["dino", "residual_raw"]))
    mom = {g: ChannelMoments() for g in want}
    for _, arrs in tqdm(c.iter_batches(want, batch_size), total=(len(c) + batch_size - 1) // batch_size,
                        disable=not progress, desc="stats"):
        for g, a in arrs.items():
            mom[g].update(a if a.ndim > 1 else a[:, None])
    out = {}
    for g in groups:
        mean, std = mom[g].mean_std()
        out[g] = {"mean": mean.tolist(), "std": std.tolist(), "count": mom[g].n}
    if fixed:
        md, sd = mom["dino"].mean_std()
        mr, sr = mom["residual_raw"].mean_std()
        out["alignment"] = {"mu_dino": float(md.mean()), "sigma_dino": float(sd.mean()),
                            "mu_res": float(mr.mean()), "sigma_res": float(sr.mean())}
    with cache_lock(c.root, {"cmd": "stats", "groups": ",".join(groups)}):
        write_json_atomic(c.root / "stats.json", out)
    return out


def save_official_stats(path, mean, std) -> None:
    """Write the official SVG ``dinov3_sp_stats.pt`` layout (float32 [1,1,C] tensors)."""
    mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(1, 1, -1)
    std = torch.as_tensor(np.asarray(std), dtype=torch.float32).view(1, 1, -1)
    torch.save({"dinov3_sp_mean": mean, "dinov3_sp_std": std}, str(path))


def load_stats(path) -> dict:
    """Per-channel {"mean": np [C], "std": np [C]} from the official .pt, a stats.json or a cache dir."""
    p = Path(path)
    if p.is_dir():
        st = open_cache(p).latent_stats()
        if st is None:
            raise CacheError(f"{p} has no latent statistics; run `svgfeat stats {p}` first")
        return st
    if p.suffix == ".json":
        d = json.loads(p.read_text())
        d = d.get("latent", d)
        return {"mean": np.asarray(d["mean"], dtype=np.float64), "std": np.asarray(d["std"], dtype=np.float64)}
    from ..checkpoints import load_file

    d = load_file(p)
    if "dinov3_sp_mean" not in d or "dinov3_sp_std" not in d:
        raise CheckpointError(f"{p.name}: expected keys dinov3_sp_mean/dinov3_sp_std (official stats format), "
                              f"got {sorted(d)[:5]}")
    return {"mean": d["dinov3_sp_mean"].reshape(-1).double().numpy(),
            "std": d["dinov3_sp_std"].reshape(-1).double().numpy()}
