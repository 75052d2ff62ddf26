"""Cheap integrity on every read: fast hashes (xxh3-64) recorded at write time, checked on first use.

Each shard index holds ``"xxh3": {"algo": "xxh3_64", "block": B, "header": hex, "groups": {group: hexes}}``:
one hash of the safetensors header bytes (checked whenever the cache is opened; the header holds the shard
number, so two swapped shards of the same size differ) and, per group, one 16-hex-digit hash per B-byte
block of its data (concatenated). A block is checked the first time a process reads bytes of it: while
reading when a read covers a whole group, otherwise in one extra pass over the blocks touched (so a
random row costs at most one block). The manifest entry of every shard holds ``"index_xxh3"``, the hash
of the index file itself, checked whenever the index is opened (an edited label, path or hash is
refused). sha256 stays the full-file checksum of ``svgfeat cache verify``.

Caches written before these fields existed carry only the sha256: their shards are hashed with sha256
once per process, on first read (slower, same guarantee); re-extracting (``--overwrite``) records the
fast hashes.
"""

from __future__ import annotations

import hashlib
import os
import threading

import xxhash

ALGO = "xxh3_64"
HEX_LEN = 16
BLOCK = 256 << 10  # bytes per checked block: a random row read checks at most ~BLOCK extra bytes
CHUNK = 8 << 20
_CHECKED: dict = {}  # (path, inode, size, mtime_ns, part, digest of the expected hashes) -> bytearray of flags
_LOCK = threading.Lock()


def of_bytes(b) -> str:
    return xxhash.xxh3_64_hexdigest(b)


def is_hex(v, allow_many: bool = False) -> bool:
    return isinstance(v, str) and (len(v) == HEX_LEN or allow_many and len(v) % HEX_LEN == 0) and \
        all(c in "0123456789abcdef" for c in v)


class BlockHasher:
    """Feed bytes in any pieces; ``hexdigests()``: the concatenated hash of every ``block`` bytes (last partial)."""

    def __init__(self, block: int = BLOCK):
        self.block, self.fill, self.out = int(block), 0, []
        self.h = xxhash.xxh3_64()

    def update(self, data) -> None:
        mv = memoryview(data).cast("B")
        i = 0
        while i < len(mv):
            take = min(self.block - self.fill, len(mv) - i)
            self.h.update(mv[i:i + take])
            self.fill += take
            i += take
            if self.fill == self.block:
                self.out.append(self.h.hexdigest())
                self.h.reset()
                self.fill = 0

    def hexdigests(self) -> str:
        return "".join(self.out + ([self.h.hexdigest()] if self.fill else []))


def fd_range(fd: int, begin: int, end: int, h, chunk: int = CHUNK):
    """Feed bytes [begin, end) of an open file to ``h`` (anything with ``update``); returns ``h``."""
    pos = begin
    while pos < end:
        b = os.pread(fd, min(chunk, end - pos), pos)
        if not b:
            break
        h.update(b)
        pos += len(b)
    return h


def fd_header(fd: int, data_start: int) -> str:
    return fd_range(fd, 0, data_start, xxhash.xxh3_64()).hexdigest()


def fd_sha256(fd: int, size: int) -> str:
    return fd_range(fd, 0, size, hashlib.sha256()).hexdigest()


def flags(fd: int, path, part: str, expected: str, n_blocks: int) -> bytearray:
    """The process-wide 'already checked' flags of ``part`` of the open file (one per block)."""
    st = os.fstat(fd)
    k = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, part, len(expected), of_bytes(expected.encode()))
    with _LOCK:
        f = _CHECKED.get(k)
        if f is None:
            f = _CHECKED[k] = bytearray(n_blocks)
        return f


def forget() -> None:
    """Forget what this process has checked (a later read checks again)."""
    with _LOCK:
        _CHECKED.clear()
