"""Exact per-channel statistics of a cache group in one streaming pass (float64, order-independent of batching).

Also the fixed-alignment statistics when the cache holds ``dino`` and ``residual_raw``, and the
official ``dinov3_sp_stats.pt`` format ({"dinov3_sp_mean": [1,1,C], "dinov3_sp_std": [1,1,C]}).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import checkpoints as ck
from ..atomic import write_json_atomic
from ..errors import CacheError, CheckpointError, ConfigError
from ..models.align import AlignmentStats, ChannelMoments
from ..regular_files import opened, read_text
from .lock import cache_lock
from .reader import open_cache

MEAN_KEY, STD_KEY = "dinov3_sp_mean", "dinov3_sp_std"  # the official dinov3_sp_stats.pt keys


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
        out["alignment"] = AlignmentStats(mom["dino"], mom["residual_raw"]).compute()
    with cache_lock(c.root, {"cmd": "stats", "groups": ",".join(groups)}):
        write_json_atomic(c.root / "stats.json", out)
    return out


# ---------------------------------------------------------------------------- latent-statistics files (one home)
def load_stats(source) -> dict:
    """Latent stats -> {"mean": float32 [C], "std": float32 [C]} (torch).

    source: the official ``.pt`` ({dinov3_sp_mean, dinov3_sp_std}), an ``.npz``/``.safetensors`` with
    mean/std, a ``stats.json`` (``svgfeat stats``), a cache folder, a dict with mean/std (numpy, torch or
    lists), or an object with ``latent_stats()`` (a cache). The one latent-stats reader
    (``svgfeat.generation.stats.load_stats`` is this function).
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        source = open_cache(source)
    if hasattr(source, "latent_stats"):
        source = source.latent_stats()
        if source is None:
            raise ConfigError("the cache has no latent statistics; run `svgfeat stats CACHE` first or pass stats")
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():  # a FIFO, folder or device is refused by the regular-file readers below
            raise ConfigError(f"latent stats file not found: {p}")
        if p.suffix == ".json":
            try:
                source = json.loads(read_text(p, "latent stats", error=ConfigError))
            except (ValueError, RecursionError) as e:
                raise ConfigError(f"latent stats {p}: unreadable JSON ({e})") from None
            if isinstance(source, dict) and isinstance(source.get("latent"), dict):
                source = source["latent"]
        elif p.suffix == ".npz":
            try:
                with opened(p, "latent stats", error=ConfigError) as f, np.load(f, allow_pickle=False) as d:
                    source = {k: d[k] for k in d.files}
            except (OSError, ValueError, EOFError) as e:
                raise ConfigError(f"latent stats {p}: not a readable .npz file ({e})") from None
        else:
            source = ck.load_file(p)
    if not isinstance(source, dict):
        raise ConfigError(f"latent stats: expected a file, dict or cache, got {type(source).__name__}")
    for mk, sk in ((MEAN_KEY, STD_KEY), ("mean", "std"), ("latent_mean", "latent_std")):
        if mk in source and sk in source:
            mean = torch.as_tensor(np.asarray(source[mk], dtype=np.float32)).reshape(-1)
            std = torch.as_tensor(np.asarray(source[sk], dtype=np.float32)).reshape(-1)
            break
    else:
        raise CheckpointError(f"latent stats: need keys ({MEAN_KEY}, {STD_KEY}) or (mean, std); got {sorted(source)}")
    if mean.shape != std.shape:
        raise ConfigError(f"latent stats: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in size")
    if not torch.all(std > 0):
        raise ConfigError("latent stats: std must be > 0 for every channel")
    return {"mean": mean, "std": std}


def save_stats(path, mean, std) -> Path:
    """Write the official ``dinov3_sp_stats.pt`` layout (float32 [1,1,C] each)."""
    p = Path(path)
    m = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(1, 1, -1)
    s = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(1, 1, -1)
    ck.save_torch(p, {MEAN_KEY: m.contiguous(), STD_KEY: s.contiguous()})  # atomic, never a half file
    return p


save_official_stats = save_stats
