"""Many small shards cost (almost) no more than one big shard: the persistent per-rank loader.

Equal work: the same N JPEGs (ImageNet-like 500x375), the same model, workers, batch size, threads and
storage; only the shard layout changes. Three runs, alternated and repeated (min of ``--repeat``):
  one      1 shard of N                      (baseline)
  many     N/32 shards of 32, one loader      (svgfeat now)
  restart  N/32 shards of 32, a new loader per shard (the pre-engine behaviour, rebuilt from the same parts)
Prints seconds, img/s and the ratios many/one (issue J: <= 1.15) and restart/one.

    python benchmarks/bench_extract_shards.py [--n 768] [--shard 32] [--size 128] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import photo_folder  # noqa: E402


def _restart_extract(svgfeat, folder, out, kw):
    """The old engine's data path: the same pipeline, but one DataLoader (worker start + drain) per shard."""
    from svgfeat.extraction import engine

    real = engine.run_shards

    def per_shard(out_, ds, todo, encode, opts, progress):
        for t in todo:
            real(out_, ds, [t], encode, opts, progress)

    engine.run_shards = per_shard
    try:
        return svgfeat.extract(folder, out, **kw)
    finally:
        engine.run_shards = real


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=768)
    ap.add_argument("--shard", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import torch

    import svgfeat

    tmp = Path(tempfile.mkdtemp(prefix="svgfeat_bench_shards_"))
    try:
        folder = photo_folder(tmp / "imgs", args.n)
        enc = svgfeat.create_model("test_tiny")
        base = dict(size=args.size, batch_size=args.batch, workers=args.workers, groups=["latent", "cls"],
                    progress=False)
        runs = {"one": lambda out: svgfeat.extract(folder, out, enc, shard_size=args.n, **base),
                "many": lambda out: svgfeat.extract(folder, out, enc, shard_size=args.shard, **base),
                "restart": lambda out: _restart_extract(svgfeat, folder, out, dict(encoder=enc, shard_size=args.shard,
                                                                                  **base))}
        best = {k: float("inf") for k in runs}
        runs["one"](tmp / "warmup")  # page cache, lazy imports
        digests = {}
        for r in range(args.repeat):
            for name, fn in runs.items():
                out = tmp / f"{name}_{r}"
                t0 = time.perf_counter()
                c = fn(out)
                best[name] = min(best[name], time.perf_counter() - t0)
                digests.setdefault(name, c.read("cls").tobytes())
                shutil.rmtree(out)
        assert digests["many"] == digests["restart"], "same shard layout must give identical rows"
        print(f"extract {args.n} JPEGs 500x375 -> {args.size}px, test_tiny, {args.workers} workers, batch {args.batch}, "
              f"torch threads {torch.get_num_threads()} (min of {args.repeat}; machine may be shared)")
        for name, label in (("one", f"1 shard of {args.n}"), ("many", f"{args.n // args.shard} shards of {args.shard}, "
                                                                          "one loader"),
                            ("restart", f"{args.n // args.shard} shards of {args.shard}, loader per shard")):
            print(f"  {label:<40s} {best[name]:7.2f} s  {args.n / best[name]:8.1f} img/s")
        print(f"ratio many/one    = {best['many'] / best['one']:.3f}  (issue J check: <= 1.15)")
        print(f"ratio restart/one = {best['restart'] / best['one']:.3f}  (the pre-engine per-shard loader)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
