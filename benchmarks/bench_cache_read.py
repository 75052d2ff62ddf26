"""Cache reads at many shards: open files, peak RSS and time of a whole-group read, this svgfeat vs a baseline.

Builds one cache with ``svgfeat.from_arrays`` (N rows of ``cls`` + ``pooled``, float32, ``--shard-size`` rows per
shard), then reads it in fresh child processes under ``ulimit -n --nofile``: ``open_cache``, ``read`` of every
row of each group, ``to("cpu")``, a random-row read. Each child reports wall time, peak RSS above its
post-import baseline (VmHWM) and the most file descriptors seen. ``--baseline PATH`` runs the same child with
``PYTHONPATH=PATH`` (e.g. an older checkout) on the same cache, in the same run, and prints ratios.

    python benchmarks/bench_cache_read.py --rows 50000 --dim 384 --shard-size 32 --nofile 256 --baseline /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, threading, time
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
import svgfeat, torch
def rss():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across fork+exec)
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
peak_fd, stop = [0], []
def watch():
    while not stop:
        peak_fd[0] = max(peak_fd[0], len(os.listdir("/proc/self/fd")))
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
res = {"svgfeat": svgfeat.__file__}
try:
    base = rss()
    t = time.perf_counter(); c = svgfeat.open_cache(sys.argv[1]); res["open_s"] = time.perf_counter() - t
    t = time.perf_counter(); a = c.read("cls"); b = c.read("pooled"); res["read_s"] = time.perf_counter() - t
    res["bytes"] = a.nbytes + b.nbytes
    res["read_rss"] = rss() - base
    del a, b
    t = time.perf_counter(); v = c.to("cpu", ["cls"])["cls"]; res["to_s"] = time.perf_counter() - t
    rows = np.random.default_rng(0).permutation(len(c))[:20000]
    t = time.perf_counter(); c.read("cls", rows); res["random_s"] = time.perf_counter() - t
    res["peak_rss"] = rss() - base
    res["ok"] = True
except Exception as e:
    res.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
stop.append(1); time.sleep(0.01)
res["peak_fds"] = peak_fd[0]
print(json.dumps(res))
"""


def child(cache: Path, nofile: int, pythonpath: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([sys.executable, "-c", CHILD, str(cache), str(nofile)], capture_output=True, text=True,
                       env=env, timeout=3600, cwd=tempfile.gettempdir())  # cwd: no checkout shadows PYTHONPATH
    if r.returncode != 0:
        return {"ok": False, "error": r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else r.returncode}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--nofile", type=int, default=256)
    ap.add_argument("--baseline", default=None, help="PYTHONPATH of a baseline svgfeat checkout")
    ap.add_argument("--out", default=None, help="cache folder (default: a temp folder)")
    args = ap.parse_args()

    import numpy as np

    import svgfeat

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_cache_")) / "c"
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    svgfeat.from_arrays(out, {"cls": rng.standard_normal((args.rows, args.dim), dtype=np.float32),
                              "pooled": rng.standard_normal((args.rows, args.dim), dtype=np.float32)},
                        labels=np.arange(args.rows) % 1000, classes=[str(i) for i in range(1000)],
                        shard_size=args.shard_size, durable=False, overwrite=True)
    n_shards = -(-args.rows // args.shard_size)
    print(f"cache: {args.rows} rows x (cls+pooled) {args.dim} float32 in {n_shards} shards "
          f"(from_arrays {time.perf_counter() - t:.1f}s); children run under ulimit -n {args.nofile}")
    runs = {"this": child(out, args.nofile, str(Path(__file__).resolve().parents[1]))}
    if args.baseline:
        runs["baseline"] = child(out, args.nofile, args.baseline)
        if not runs["baseline"].get("ok"):
            runs["baseline@4096"] = child(out, 4096, args.baseline)
    for name, r in runs.items():
        if not r.get("ok"):
            print(f"{name:>14}: FAILED {r.get('error')}")
            continue
        print(f"{name:>14}: [{Path(r['svgfeat']).parents[1]}] open {r['open_s']:.2f}s  read all {r['read_s']:.2f}s  to(cpu) {r['to_s']:.2f}s  "
              f"20k random rows {r['random_s']:.2f}s  read peak RSS {r['read_rss'] / r['bytes']:.2f}x data "
              f"({r['bytes'] / 2**20:.0f} MiB)  overall peak {r['peak_rss'] / 2**20:.0f} MiB  "
              f"peak open fds {r['peak_fds']}")
    base = runs.get("baseline") if runs.get("baseline", {}).get("ok") else runs.get("baseline@4096")
    if base and base.get("ok") and runs["this"].get("ok"):
        t, b = runs["this"], base
        print(f"ratio this/baseline: read time {t['read_s'] / b['read_s']:.2f}x, read RSS "
              f"{t['read_rss'] / max(b['read_rss'], 1):.2f}x, peak fds {t['peak_fds'] / b['peak_fds']:.2f}x")


if __name__ == "__main__":
    main()
