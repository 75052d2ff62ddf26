"""One DataLoader per rank over all the items of its shards, in shard order.

Workers decode (PIL) or, with device decoding, only read JPEG bytes; they live for the whole run (one
loader, so no restart and no pipeline drain between shards). Every loader batch lies inside one shard:
:class:`ShardPlan` yields (shard, items, last-batch-of-shard) in the same order the loader returns batches.
The loader never pins memory (no per-batch or per-blob ``pin_memory``): host -> device copies go through the
reused pinned ring of the encoder's :class:`~svgfeat.device_staging.DeviceStage`. ``prefetch`` is the
DataLoader's ``prefetch_factor`` (batches decoded ahead per worker).
"""

from __future__ import annotations

import torch

from ..data.decode import DecodeError
from ..data.views import make_view


class Items(torch.utils.data.Dataset):
    """Item i of a dataset -> (i, views [K,3,S,S] or JPEG bytes or None, failure reason or None, source
    fingerprint). The fingerprint (:mod:`svgfeat.data.fingerprint`) is taken before the item is read, so a
    file changed while it is read is noticed by the next run."""

    def __init__(self, ds, transform, views, view_seed, draft=None, expect_hw=None, hash_sources=False):
        self.ds, self.transform, self.views, self.view_seed, self.draft = ds, transform, views, view_seed, draft
        self.expect_hw = tuple(expect_hw) if expect_hw else None  # preset 'none': every row must have this size
        self.hash_sources = hash_sources

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        from ..data.fingerprint import item_fingerprint

        fp = item_fingerprint(self.ds, i, self.hash_sources)
        return (*self._item(i), fp)

    def _item(self, i):
        if self.draft == "bytes":  # device decoding: only read the file here
            from ..data.gpu_decode import device_decodable

            try:
                if getattr(self.ds, "missing", None) and i in self.ds.missing:
                    return self._decode(i)
                raw = self.ds.read_bytes(i)
            except OSError as e:
                return i, None, f"unreadable: {e}"
            if len(raw) == 0:
                return i, None, "empty-file"
            blob = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            if device_decodable(blob):
                return i, blob, None  # else: PIL here (EXIF rotation, CMYK, not a JPEG)
        return self._decode(i)

    def _decode(self, i):
        draft = self.draft if isinstance(self.draft, int) else None
        try:
            img = self.ds.load(i, draft=draft) if draft else self.ds.load(i)
            x = torch.stack([make_view(img, self.transform, v, self.view_seed, i) for v in range(self.views)])
            if self.expect_hw and tuple(x.shape[-2:]) != self.expect_hw:
                return i, None, (f"size-mismatch: {x.shape[-2]}x{x.shape[-1]}, but this cache holds "
                                 f"{self.expect_hw[0]}x{self.expect_hw[1]} images (preset 'none' keeps every "
                                 "image's size; use --preset resize for mixed sizes)")
            return i, x, None
        except DecodeError as e:
            return i, None, e.reason + (f": {e.detail}" if e.detail else "")
        except (OSError, ValueError) as e:
            return i, None, f"unreadable: {e}"


def collate(batch):
    """Worker-side collation: the views of every decoded item stacked into ONE tensor (one shared-memory
    transfer per batch), raw JPEG bytes kept as a list, failures as (item, reason), source fingerprints as
    {item: fingerprint}."""
    dense = [(i, x) for i, x, err, _ in batch if err is None and x.is_floating_point()]
    blobs = [(i, x) for i, x, err, _ in batch if err is None and not x.is_floating_point()]
    fails = [(i, err) for i, _, err, _ in batch if err is not None]
    x = torch.cat([x for _, x in dense]) if dense else None
    return [i for i, _ in dense], x, blobs, fails, len(batch), {i: fp for i, _, _, fp in batch}


class ShardPlan:
    """Batches of item indices for shards [(s, start, end), ...], never crossing a shard boundary."""

    def __init__(self, shards, per_batch: int):
        self.shards, self.per_batch = list(shards), per_batch

    def steps(self):
        for s, start, end in self.shards:
            for a in range(start, end, self.per_batch):
                b = min(a + self.per_batch, end)
                yield s, list(range(a, b)), b == end

    def __iter__(self):  # the loader's batch sampler
        return (items for _, items, _ in self.steps())

    def __len__(self):
        return sum((e - a + self.per_batch - 1) // self.per_batch for _, a, e in self.shards)


def first_decodable_hw(ds, n_items: int, transform, tries: int = 256) -> tuple[int, int] | None:
    """(H, W) of the first item that decodes (preset 'none' keeps image sizes: the cache takes this one)."""
    items = Items(ds, transform, 1, 0)
    for i in range(min(n_items, tries)):
        _, x, err = items._decode(i)
        if err is None:
            return tuple(int(v) for v in x.shape[-2:])
    return None


def make_loader(ds, plan: ShardPlan, transform, views: int, view_seed: int, workers: int, draft=None,
                expect_hw=None, prefetch: int = 4, hash_sources: bool = False):
    return torch.utils.data.DataLoader(
        Items(ds, transform, views, view_seed, draft, expect_hw, hash_sources), batch_sampler=plan,
        num_workers=workers, collate_fn=collate, pin_memory=False, persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None)
