"""Exact per-channel statistics of a cache group in one streaming pass (float64, order-independent of batching).

Also the fixed-alignment statistics when the cache holds ``dino`` and ``residual_raw``, and the
official ``dinov3_sp_stats.pt`` format ({"dinov3_sp_mean": [1,1,C], "dinov3_sp_std": [1,1,C]}).
"""

from __future__ import annotations

from ..errors import CacheError
from ..generation.stats import load_stats  # noqa: F401  (latent-stats IO home)
from ..generation.stats import save_stats as save_official_stats  # noqa: F401
from ..models.align import AlignmentStats, ChannelMoments
from .atomic import write_json_atomic
from .lock import cache_lock
from .reader import open_cache


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


