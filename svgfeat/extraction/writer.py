"""Background shard writer: concatenation, safetensors + sha256, the shard index, all off the device loop.

A bounded queue (``depth`` finished shards) keeps memory bounded; a full queue makes the producer wait
(the disk is the bottleneck then). An error in the writer thread is raised in the producer at its next
``submit`` or at ``close``. Every file is written atomically (temp name + rename), so a killed run leaves
only whole shards behind.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_json_atomic
from ..cache.manifest import shard_name
from ..cache.shards import write_shard


def index_name(s: int) -> str:
    return shard_name(s).replace(".safetensors", ".json")


@dataclass
class ShardJob:
    """One finished shard: encoded chunks (in row order) and its sample index."""

    shard: int
    items: tuple  # [start, end) dataset items
    groups: list
    chunks: list = field(default_factory=list)  # [Encoded]
    paths: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    item_ids: list = field(default_factory=list)
    views: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    sources: list | None = None  # per item of [start, end): the source fingerprint (data/fingerprint.py)

    def write(self, out: Path) -> None:
        parts = [c.wait() for c in self.chunks]
        tensors = {g: torch.cat([p[g] for p in parts]) for g in self.groups} if parts else {
            g: torch.zeros(0) for g in self.groups}
        name = shard_name(self.shard)
        start, end = self.items
        fast: dict = {}
        digest = write_shard(out / name, tensors, {"shard": self.shard, "items": [start, end]}, fast=fast)
        index = {"shard": self.shard, "items_range": [start, end], "rows": len(self.paths), "paths": self.paths,
                 "labels": self.labels, "items": self.item_ids, "views": self.views, "failures": self.failures,
                 "sha256": digest, "xxh3": fast, "size": (out / name).stat().st_size, "sources": self.sources}
        write_json_atomic(out / index_name(self.shard), index)


class ShardWriter:
    """``submit(job)`` hands a finished shard to the writer thread; ``close()`` waits for all of them."""

    def __init__(self, out, depth: int = 2):
        self.out, self.error = Path(out), None
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._t = threading.Thread(target=self._run, name="svgfeat-shard-writer", daemon=True)
        self._t.start()

    def _run(self):
        while True:
            job = self._q.get()
            if job is None:
                return
            if self.error is None:
                try:
                    job.write(self.out)
                except BaseException as e:  # handed to the producer
                    self.error = e

    def _raise(self):
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def submit(self, job: ShardJob) -> None:
        while True:
            self._raise()
            try:
                self._q.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, raise_errors: bool = True) -> None:
        """Write what is queued, stop the thread; re-raise a writer error unless ``raise_errors`` is False."""
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()
        if raise_errors:
            self._raise()
