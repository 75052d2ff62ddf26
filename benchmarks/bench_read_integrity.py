"""Hash-on-read cost: a full read of a cache with the fast-hash check (xxh3-64 per 256 KiB block, recorded at
write time) vs the same read with the check switched off, in the same run, on the same cache.

One cache is written with ``svgfeat.from_arrays`` in the scale benchmark's layout (fp16 ``cls`` + ``pooled`` of
384, plus ``latent`` rows [392, 16, 16] fp16; ``--shard-size`` rows per shard). Each measurement is a fresh
child process (so every block is checked once, as in a new head): ``open_cache`` and a read of every row of
every group, as stored (fp16) and as float32 (the heads' dtype), plus 20,000 random ``cls`` rows. The baseline
child replaces the two check entry points of ``ShardHandle`` by no-ops: equal reads, no hashing. Repeats
alternate the two variants; the minimum over repeats (the least disturbed run on a shared machine) is reported
with the ratios checked / unchecked, of the child's CPU time (the hash is CPU work) and of wall time.

    python benchmarks/bench_read_integrity.py --rows 200000 --latent-rows 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
import svgfeat
from svgfeat.cache import pool
if sys.argv[2] == "off":
    pool.ShardHandle.ensure = lambda self, group, lo=0, hi=None: None
    pool.ShardHandle._inline = lambda self, group, start, stop: None
c = svgfeat.open_cache(sys.argv[1])
res = {}
for dt in ("stored", "float32"):
    t, cpu = time.perf_counter(), time.process_time()
    n = 0
    for g in sorted(c.groups):
        a = c.read(g) if dt == "stored" else c.read(g, dtype="float32")
        n += a.nbytes
        del a
    res[dt], res[dt + "_cpu"] = time.perf_counter() - t, time.process_time() - cpu
    res[dt + "_bytes"] = n
from svgfeat.cache.fasthash import BlockHasher
cpu = 0.0
for g in sorted(c.groups):  # the check's extra work alone: xxh3 over the same bytes, already in memory
    a = c.read(g)
    t = time.process_time(); h = BlockHasher(); h.update(a.reshape(-1).view(np.uint8)); h.hexdigests()
    cpu += time.process_time() - t
    del a
res["hash_cpu"] = res["hash"] = cpu
if "cls" in c.groups:
    svgfeat.cache.fasthash.forget()
    c2 = svgfeat.open_cache(sys.argv[1])
    rows = np.random.default_rng(0).permutation(len(c2))[:20000]
    t, cpu = time.perf_counter(), time.process_time()
    c2.read("cls", rows)
    res["random"], res["random_cpu"] = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps(res))
"""


def build(out: Path, rows: int, latent_rows: int, shard_size: int) -> None:
    import numpy as np

    import svgfeat

    rng = np.random.default_rng(0)
    groups = {"cls": rng.standard_normal((rows, 384), dtype=np.float32).astype(np.float16),
              "pooled": rng.standard_normal((rows, 384), dtype=np.float32).astype(np.float16)}
    svgfeat.from_arrays(out / "flat", groups, labels=rng.integers(0, 1000, rows), shard_size=shard_size, durable=False)
    if latent_rows:
        mm = np.lib.format.open_memmap(out / "latent.npy", mode="w+", dtype=np.float16,
                                       shape=(latent_rows, 392, 16, 16))
        for s in range(0, latent_rows, 256):
            mm[s:s + 256] = rng.standard_normal((min(256, latent_rows - s), 392, 16, 16), dtype=np.float32)
        svgfeat.from_arrays(out / "latent", {"latent": mm}, shard_size=max(1, shard_size // 8), durable=False)
        del mm
        os.unlink(out / "latent.npy")


def child(cache: Path, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", CHILD, str(cache), mode], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="cls + pooled rows.")
    ap.add_argument("--latent-rows", type=int, default=2000, help="latent rows (0: skip).")
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="svgfeat-integrity-") as tmp:
        work = Path(tmp)
        build(work, args.rows, args.latent_rows, args.shard_size)
        caches = [("cls+pooled", work / "flat")] + ([("latent", work / "latent")] if args.latent_rows else [])
        print("| cache | read | checked CPU s | unchecked CPU s | CPU ratio | checked wall s | unchecked wall s "
              "| wall ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for name, path in caches:
            runs = {"on": [], "off": []}
            for _ in range(args.repeats):
                for mode in ("off", "on"):
                    runs[mode].append(child(path, mode))
            for key in ("stored", "float32", "random") if name == "cls+pooled" else ("stored", "float32"):
                on = min(r[key] for r in runs["on"])
                off = min(r[key] for r in runs["off"])
                con = min(r[key + "_cpu"] for r in runs["on"])
                coff = min(r[key + "_cpu"] for r in runs["off"])
                gb = runs["on"][0].get(key + "_bytes", 0) / 2**30
                label = {"stored": f"all rows, fp16 ({gb:.2f} GiB)", "float32": f"all rows, float32 ({gb:.2f} GiB)",
                         "random": "20,000 random cls rows"}[key]
                print(f"| {name} | {label} | {con:.3f} | {coff:.3f} | **{con / coff:.3f}** | {on:.3f} | {off:.3f} "
                      f"| {on / off:.3f} |")
            hcpu = min(r["hash_cpu"] for r in runs["on"])
            coff = min(r["stored_cpu"] for r in runs["off"])
            print(f"| {name} | xxh3 of the same bytes alone vs the unchecked fp16 read | {hcpu:.3f} | {coff:.3f} "
                  f"| **{hcpu / coff:.3f}** | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
