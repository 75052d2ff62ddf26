"""The data side of dense-head training: the epoch-free online stream of augmented crops (each torchrun rank
loads only its share of every global batch) and the aligned targets of a dense-feature cache."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError


class _Pairs(torch.utils.data.Dataset):
    """Item j -> the augmented pair at global stream position ``positions[j]`` (image order[k], rng (seed, k))."""

    def __init__(self, ds, aug, order: np.ndarray, seed: int, positions: np.ndarray):
        self.ds, self.aug, self.order, self.seed, self.positions = ds, aug, order, seed, positions

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, j):
        k = int(self.positions[j])
        img, target = self.ds.load_pair(int(self.order[k]))
        return self.aug(img, target, np.random.default_rng((self.seed, k)))


def _online_loader(ds, aug, batch_size: int, iters: int, seed: int, workers: int, rank: int = 0, world: int = 1):
    """DataLoader of ``iters`` batches of augmented crops: x float32 [b, 3, h, w], targets [b, h, w].

    The epoch-free stream of global batches of ``batch_size`` depends only on the seed; rank ``rank`` of
    ``world`` loads (decodes, augments) only items ``rank::world`` of each global batch, b = batch_size / world.
    """
    n = len(ds)
    if n == 0:
        raise DataError("the training dataset is empty")
    rng = np.random.default_rng(seed)
    need = iters * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])[:need]
    mine = np.arange(need).reshape(iters, batch_size)[:, rank::world].ravel()
    return torch.utils.data.DataLoader(
        _Pairs(ds, aug, order, seed, mine), batch_size=batch_size // world, shuffle=False, num_workers=workers,
        drop_last=False, collate_fn=_collate, persistent_workers=False)


def _collate(batch):
    return torch.stack([t[0] for t in batch]), torch.as_tensor(np.stack([t[1] for t in batch]))


def cached_dense_set(cache, data, group: str, stride: int, device, opener, load, transform, what: str):
    """Dense features + aligned targets from a cache and the dataset ``data`` it was extracted from.

    ``opener(data)`` opens the dataset, ``load(ds, i)`` reads target i and ``transform(target, spec)`` applies
    the cache's image transform to it; it is then resampled (nearest) to 16 x the feature map / ``stride``.
    Returns (features [N, C, h, w] (the cache's shared device tensor, stored dtype), stacked targets tensor
    on CPU, cache encoder spec, the dataset). Rows are matched by path; views other than 0 (plain) and 1
    (flip) are skipped.
    """
    if group not in cache.groups:
        raise DataError(f"cache {cache.root} has no group {group!r} (it has {sorted(cache.groups)}); extract "
                        f"it with groups=('dino', 'latent')")
    if len(cache.groups[group]["shape"]) != 3:
        raise DataError(f"group {group!r} of cache {cache.root} is not a dense map [C, h, w]")
    if data is None:
        raise DataError(f"cached training needs the {what} dataset the cache was made from as y")
    ds = opener(data)
    where = {p: i for i, p in enumerate(ds.paths)}
    spec = dict(cache.transform)
    C, h, w = cache.groups[group]["shape"]
    full, size = (16 * h, 16 * w), (16 * h // int(stride), 16 * w // int(stride))
    rows, targets = [], []
    views = getattr(cache, "view_ids", np.zeros(len(cache), dtype=np.int64))
    for r, p in enumerate(cache.paths):
        if p not in where or views[r] > 1:
            continue
        t = transform(load(ds, where[p]), dict(spec, hflip=bool(spec.get("hflip")) ^ (views[r] == 1)))
        if t.shape != full:
            raise DataError(f"{p}: the transformed {what} target is {t.shape} but the features cover {full}; "
                            "extract the cache with preset 'resize' or 'none' (images of one size)")
        rows.append(r)
        targets.append(t if t.shape == size else _resize_nearest(t, size))
    if not rows:
        raise DataError(f"no row of cache {cache.root} matches a path of dataset {ds.spec}")
    feats = cache.to(device, [group])[group]
    if len(rows) != len(cache):
        feats = feats[torch.as_tensor(rows, device=feats.device)]
    return feats, torch.as_tensor(np.stack(targets)), cache.encoder_spec, ds


def _resize_nearest(t: np.ndarray, size) -> np.ndarray:
    from PIL import Image

    mode = "F" if t.dtype.kind == "f" else "L"
    src = t.astype(np.float32 if mode == "F" else np.uint8)
    return np.asarray(Image.fromarray(src, mode).resize((size[1], size[0]), Image.NEAREST)).astype(t.dtype)
