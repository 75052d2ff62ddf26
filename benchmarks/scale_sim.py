"""ImageNet-scale simulation: wall time, peak RSS and open-file limits of the CLI heads on synthetic caches.

Synthetic caches in the real format are written with ``svgfeat.cache.from_arrays`` (no encoder): N rows of
``cls`` + ``pooled`` (2 x 384, fp16 like a real ViT-S/16+ cache, 1000 classes of Gaussian clusters) and
``latent`` rows [392, 16, 16] fp16 for the DiT data path. Every command runs as a child process (the CLI where
one exists), so its peak RSS is its own (``os.wait4`` rusage of that child) and ``--ulimit-nofile`` applies to it:

    probe           svgfeat probe --train T --val V --iterations I --lrs 0.1   (one head, few steps: memory, not accuracy;
                    --probe-lrs '' runs the default 13-head grid)
    knn             svgfeat knn --train T --val V -k 20
    index --auto    svgfeat index build T --auto --max-memory 4GB              (IVF-Flat, nprobe tuned to recall@10 0.95)
    stats           svgfeat stats L --groups latent                            (latent cache)
    dit-data        one epoch of LatentBatcher batches over the latent cache, streaming (preload disabled)

Each size N reports seconds, peak RSS and the RSS budget of issue J (2 x the float32 data the command reads
+ 1.5 GB), and the growth of time / RSS per 4x N.

    python benchmarks/scale_sim.py                                   # N = 50k / 200k / 1.28M, val 50k
    python benchmarks/scale_sim.py --sizes 50000,200000 --val-rows 5000 --latent-rows 5000,20000
    python benchmarks/scale_sim.py --check                           # issue J check (below)

``--check``: 400,000 rows of cls+pooled in 1,563 shards (256 rows each) under ``ulimit -n 512``: knn, probe and
``index build --auto`` must all succeed with peak RSS <= 2 x the float32 data they read + 1.5 GB; exit status 1
otherwise. Disk: ~1.5 KB per cls+pooled row (1.28M rows ~ 2 GB) and 200 KB per latent row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D_HALF = 384  # cls and pooled widths of ViT-S/16+
LATENT_SHAPE = (392, 16, 16)
CLASSES = 1000
GB = 1 << 30


def _memmap(path: Path, shape, dtype=np.float16):
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))


def synth_flat(workdir: Path, n: int, seed: int, centers: np.ndarray, chunk: int = 65536):
    """cls/pooled fp16 memmaps [n, 384] (class centre + noise) and labels [n] in dataset (class) order."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, CLASSES, n)).astype(np.int64)  # ImageNet folders: rows grouped by class
    cls = _memmap(workdir / f"cls_{seed}.npy", (n, D_HALF))
    pooled = _memmap(workdir / f"pooled_{seed}.npy", (n, D_HALF))
    for a in range(0, n, chunk):
        y = labels[a:a + chunk]
        noise = rng.standard_normal((len(y), 2 * D_HALF), dtype=np.float32)
        x = centers[y] + noise
        cls[a:a + len(y)] = x[:, :D_HALF]
        pooled[a:a + len(y)] = x[:, D_HALF:]
    cls.flush()
    pooled.flush()
    return {"cls": cls, "pooled": pooled}, labels


def synth_latent(workdir: Path, n: int, seed: int, chunk: int = 1024):
    rng = np.random.default_rng(seed)
    lat = _memmap(workdir / f"latent_{n}.npy", (n, *LATENT_SHAPE))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        lat[a:b] = rng.standard_normal((b - a, *LATENT_SHAPE), dtype=np.float32)
    lat.flush()
    return {"latent": lat}, (np.arange(n) % CLASSES).astype(np.int64)


def write_cache(out: Path, groups: dict, labels, shard_size: int):
    from svgfeat.cache import from_arrays

    t = time.perf_counter()
    classes = [f"n{i:08d}" for i in range(CLASSES)]
    from_arrays(out, groups, labels=labels, classes=classes, shard_size=shard_size)
    return time.perf_counter() - t


def run_child(cmd: list[str], log: Path, nofile: int | None, env=None) -> dict:
    """Run ``cmd``; returns {"rc", "seconds", "peak_rss_gb"} with the child's own peak RSS (wait4 rusage)."""
    def limit():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log, "w") as f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=limit, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": p.returncode, "seconds": round(dt, 2), "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_rss_gb": round(ru.ru_maxrss * 1024 / GB, 3)}


DIT_PASS = r"""
import sys, time, numpy as np, torch
from svgfeat.cache import open_cache
from svgfeat.generation.train import LatentBatcher
c = open_cache(sys.argv[1]); B = int(sys.argv[2])
C = c.groups["latent"]["shape"][0]  # stats from `svgfeat stats` when it ran, else identity normalisation
st = None if c.latent_stats() else {"mean": np.zeros(C, np.float32), "std": np.ones(C, np.float32)}
d = LatentBatcher(c, B, seed=0, stats=st, null_class=1000, device="cpu", preload_limit=0)
steps = len(c) // B; t = time.perf_counter(); seen = 0
for s in range(steps):
    tok, y = d.batch(s, 0, B); seen += len(y)
d.close()
new = seen / (time.perf_counter() - t)
# baseline, same process and batches count: the previous path (one random permutation per epoch, synchronous
# sorted reads of B random rows inside the step); runs second, so the page cache favours it
perm = torch.randperm(len(c), generator=torch.Generator().manual_seed(0)).numpy()
t = time.perf_counter()
for s in range(steps):
    rows = perm[s * B:(s + 1) * B]; u, inv = np.unique(rows, return_inverse=True)
    z = torch.from_numpy(c.read("latent", u)[inv]).float()  # then the same normalisation as LatentBatcher.batch
    tok = (z.flatten(2).transpose(1, 2) - d.mean) / d.std
old = steps * B / (time.perf_counter() - t)
print(f"dit-data: {seen} rows in {steps} batches: streamed {new:.0f} rows/s, synchronous random reads "
      f"{old:.0f} rows/s, ratio {new / old:.2f}")
"""


def svgfeat_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "svgfeat", *map(str, args)]


def run_flat(work: Path, n: int, args, centers, nofile, results: list, val_root: Path) -> None:
    """Build a train cache of n rows and run probe / knn / index --auto on it."""
    root = work / f"train_{n}"
    if not (root / "manifest.json").exists():
        groups, labels = synth_flat(work, n, seed=n, centers=centers)
        dt = write_cache(root, groups, labels, args.shard_size)
        for g in groups.values():
            os.unlink(g.filename)
        print(f"[N={n}] wrote {root} in {dt:.1f}s", flush=True)
    nv = args.val_rows
    f32_both = (n + nv) * 2 * D_HALF * 4
    cmds = {
        "probe": (svgfeat_cmd("probe", "--train", root, "--val", val_root, "--features", "cls+pooled",
                              "--iterations", args.probe_iterations,
                              *(("--lrs", args.probe_lrs) if args.probe_lrs else ()), "-o", work / "probe.json"),
                  f32_both),
        "knn": (svgfeat_cmd("knn", "--train", root, "--val", val_root, "--features", "cls+pooled", "-k", "20",
                            "-o", work / "knn.json"), f32_both),
        "index --auto": (svgfeat_cmd("index", "build", root, "--auto", "--max-memory", args.index_memory,
                                     "-o", work / "idx.faiss"), n * D_HALF * 4),
    }
    for name, (cmd, f32) in cmds.items():
        if args.only and name.split()[0] not in args.only:
            continue
        r = run_child(cmd, work / f"log_{name.split()[0]}_{n}.txt", nofile)
        budget = 2 * f32 / GB + 1.5
        r.update(command=name, n=n, f32_gb=round(f32 / GB, 3), budget_gb=round(budget, 3),
                 within=r["rc"] == 0 and r["peak_rss_gb"] <= budget, cmdline=" ".join(map(str, cmd[2:])))
        results.append(r)
        print(json.dumps(r), flush=True)
        if name == "index --auto":  # the index's own report: factory, tuned params, held-out recall, build time
            keep = ("factory:", "search:", "recall@", "built in:", "warning:")
            log = (work / f"log_index_{n}.txt").read_text().replace("\r", "\n").splitlines()
            r["note"] = f"index N={n}: " + " | ".join(ln.strip() for ln in log if ln.startswith(keep))
            print(r["note"], flush=True)
        if r["rc"] != 0:
            print((work / f"log_{name.split()[0]}_{n}.txt").read_text()[-2000:], flush=True)


def run_latent(work: Path, m: int, args, nofile, results: list) -> None:
    root = work / f"latent_{m}"
    if not (root / "manifest.json").exists():
        groups, labels = synth_latent(work, m, seed=1)
        dt = write_cache(root, groups, labels, 1024)
        os.unlink(groups["latent"].filename)
        print(f"[latent {m}] wrote {root} in {dt:.1f}s", flush=True)
    data_gb = m * int(np.prod(LATENT_SHAPE)) * 4 / GB
    for name, cmd in (("stats", svgfeat_cmd("stats", root, "--groups", "latent")),
                      ("dit-data", [sys.executable, "-c", DIT_PASS, str(root), str(args.dit_batch)])):
        if args.only and name not in args.only:
            continue
        r = run_child(cmd, work / f"log_{name}_{m}.txt", nofile)
        notes = [ln for ln in (work / f"log_{name}_{m}.txt").read_text().splitlines() if ln.startswith("dit-data:")]
        if notes:
            r["note"] = notes[-1]
        r.update(command=name, n=m, f32_gb=round(data_gb, 3), budget_gb=None, within=r["rc"] == 0,
                 cmdline=" ".join(map(str, cmd[2:])) if name == "stats" else f"LatentBatcher pass, batch {args.dit_batch}")
        results.append(r)
        print(json.dumps(r), flush=True)
        if r["rc"] != 0:
            print((work / f"log_{name}_{m}.txt").read_text()[-2000:], flush=True)


def growth(results: list) -> list[str]:
    """Ratios of time and peak RSS between consecutive sizes of each command, per 4x N."""
    lines = []
    for cmd in dict.fromkeys(r["command"] for r in results):
        rs = sorted((r for r in results if r["command"] == cmd and r["rc"] == 0), key=lambda r: r["n"])
        for a, b in zip(rs, rs[1:]):
            per4 = np.log(4) / np.log(b["n"] / a["n"])
            lines.append(f"{cmd:<13} N {a['n']:>9} -> {b['n']:>9}: time x{(b['seconds'] / a['seconds']) ** per4:.2f}, "
                         f"peak RSS x{(b['peak_rss_gb'] / a['peak_rss_gb']) ** per4:.2f} per 4x N")
    return lines


def table(results: list) -> str:
    out = ["| command | N | seconds | peak RSS (GB) | f32 data read (GB) | budget 2x+1.5 GB | ok |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        out.append(f"| {r['command']} | {r['n']:,} | {r['seconds']} | {r['peak_rss_gb']} | {r['f32_gb']} | "
                   f"{r['budget_gb'] if r['budget_gb'] is not None else '-'} | "
                   f"{'yes' if r['within'] else ('FAILED rc=' + str(r['rc']) if r['rc'] else 'over budget')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,200000,1281167", help="Train rows N (comma-separated).")
    ap.add_argument("--val-rows", type=int, default=50_000)
    ap.add_argument("--latent-rows", default="5000,20000", help="Rows of the latent caches ('' to skip).")
    ap.add_argument("--shard-size", type=int, default=1024, help="Rows per shard (ImageNet: 1,252 shards of 1024).")
    ap.add_argument("--probe-iterations", type=int, default=100)
    ap.add_argument("--probe-lrs", default="0.1",
                    help="--lrs of the probe ('' = the probe's default grid of 13 heads, DINOv3's).")
    ap.add_argument("--index-memory", default="4GB", help="--max-memory of `index build --auto` (the CLI default).")
    ap.add_argument("--dit-batch", type=int, default=256)
    ap.add_argument("--ulimit-nofile", type=int, default=None, help="RLIMIT_NOFILE of every child command.")
    ap.add_argument("--only", default=None, help="Comma-separated subset: probe,knn,index,stats,dit-data.")
    ap.add_argument("--check", action="store_true",
                    help="Issue J check: 400k rows in 1,563 shards under ulimit -n 512 (knn, probe, index).")
    ap.add_argument("--workdir", default=None, help="Where caches go (default: a temporary folder under /tmp).")
    ap.add_argument("--keep", action="store_true", help="Keep the caches (reruns reuse them).")
    ap.add_argument("--json", default=None, help="Write the results here too.")
    args = ap.parse_args(argv)
    if args.check:
        args.sizes, args.shard_size, args.latent_rows = "400000", 256, ""
        args.ulimit_nofile = args.ulimit_nofile or 512
        args.only = args.only or "probe,knn,index"
    args.only = set(args.only.split(",")) if args.only else None
    sizes = [int(s) for s in args.sizes.split(",") if s]
    lat_sizes = [int(s) for s in args.latent_rows.split(",") if s]

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="svgfeat-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free / GB
    need = (max(sizes, default=0) + args.val_rows) * 2 * D_HALF * 2 * 1.1 / GB + \
        max(lat_sizes, default=0) * int(np.prod(LATENT_SHAPE)) * 2 * 2.1 / GB
    print(f"workdir {work}: {free:.1f} GB free, this run needs about {need:.1f} GB; "
          f"ulimit -n {args.ulimit_nofile or 'unchanged'}; {os.cpu_count()} CPUs (machine may be shared)", flush=True)
    if need > free * 0.9:
        print(f"not enough disk space in {work}", file=sys.stderr)
        return 2
    results: list = []
    try:
        centers = np.random.default_rng(0).standard_normal((CLASSES, 2 * D_HALF)).astype(np.float32) * 0.5
        val_root = work / f"val_{args.val_rows}"
        if sizes and not (val_root / "manifest.json").exists():
            g, y = synth_flat(work, args.val_rows, seed=7, centers=centers)
            write_cache(val_root, g, y, 1024)
            for a in g.values():
                os.unlink(a.filename)
        for n in sizes:
            run_flat(work, n, args, centers, args.ulimit_nofile, results, val_root)
            if not args.keep:
                shutil.rmtree(work / f"train_{n}", ignore_errors=True)
        for m in lat_sizes:
            run_latent(work, m, args, args.ulimit_nofile, results)
            if not args.keep:
                shutil.rmtree(work / f"latent_{m}", ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    for line in growth(results):
        print(line)
    for r in results:
        if r.get("note"):
            print(r["note"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    ok = all(r["within"] for r in results)
    print("ALL WITHIN BUDGET" if ok else "SOME COMMANDS FAILED OR WENT OVER BUDGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
