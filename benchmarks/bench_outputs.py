"""Cost of checking every output before the work: ``svgfeat.outputs.check_outputs`` over N planned files vs the
writes it guards, in the same run, on the same folder.

A folder holds N/2 PNGs svgfeat wrote earlier (marked) and N/2 planned names that do not exist yet, as a rerun of
``seg predict`` / ``pca`` over a growing image list sees it. Measured, minimum over ``--repeats``:

- ``check``: ``check_outputs`` of all N paths (lstat + the ``user.svgfeat`` mark per existing file);
- ``lstat``: a bare ``os.lstat`` of the N paths (the least any up-front check must do);
- ``write``: writing the N pictures (``write_bytes_atomic``, not fsync'd, as the picture outputs are written).

The ratio check / write is what the safety costs a run that writes pictures; check / lstat is its overhead over
the minimum. ``--size`` is the bytes per picture (a 64x64 PNG is about 10 KB).

    python benchmarks/bench_outputs.py --n 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from svgfeat.atomic import write_bytes_atomic
    from svgfeat.outputs import check_outputs

    data = os.urandom(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = [folder / f"img{i:06d}_pca.png" for i in range(args.n)]
        best = {"check": float("inf"), "lstat": float("inf"), "write": float("inf")}
        for _ in range(args.repeats):
            for p in paths:
                p.unlink(missing_ok=True)
            t = time.perf_counter()
            for p in paths:
                write_bytes_atomic(p, data, durable=False)
            best["write"] = min(best["write"], time.perf_counter() - t)
            for p in paths[args.n // 2:]:  # half ours, half still to be written
                p.unlink()
            t = time.perf_counter()
            check_outputs(paths)
            best["check"] = min(best["check"], time.perf_counter() - t)
            t = time.perf_counter()
            for p in paths:
                try:
                    os.lstat(p)
                except FileNotFoundError:
                    pass
            best["lstat"] = min(best["lstat"], time.perf_counter() - t)
    print(f"N={args.n} planned outputs ({args.n // 2} existing, svgfeat's), {args.size} B each, "
          f"min of {args.repeats}")
    for k, v in best.items():
        print(f"  {k:<6} {v * 1e3:9.1f} ms  ({v / args.n * 1e6:6.1f} us/file)")
    print(f"  check / write = {best['check'] / best['write']:.3f}   check / lstat = "
          f"{best['check'] / best['lstat']:.2f}")


if __name__ == "__main__":
    main()
