"""Device JPEG decoding (``--gpu-decode``) on the CPU against the PIL workers, equal work.

Both sides: the same JPEG files (ImageNet-like photos: 500x375 landscape and 375x500 portrait, half each),
the same preset and size, the same encoder, the same torch thread count and workers=0 (everything in the
main process, so the two sides use the same cores). Two measurements:

1. ``decode``: bytes/file -> normalised tensors only: ``decode_transform`` (one batched call per batch of
   files) against ``Transform(...)(load_image(path))`` per file (the workers' code).
2. ``extract``: ``svgfeat.extract(..., gpu_decode=True, device="cpu")`` against the default PIL path with
   the same encoder; bit-for-bit equality of the two caches is checked.

The ratio printed is device-decode time / PIL time (<= 2.0 is the target of issue N).

    python benchmarks/bench_gpu_decode.py [--n 128] [--size 256] [--preset svg] [--model test_tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import photo_folder  # noqa: E402


def files(root: Path, n: int) -> list[Path]:
    photo_folder(root / "land", n - n // 2, size=(500, 375), seed=0)
    photo_folder(root / "port", n // 2, size=(375, 500), seed=1)
    return sorted(root.glob("*/*.jpg"))


def best_of(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--preset", default="svg", choices=["svg", "center-crop", "resize"])
    ap.add_argument("--model", default="test_tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import svgfeat
    from svgfeat.data.decode import load_image
    from svgfeat.data.gpu_decode import decode_transform, read_bytes
    from svgfeat.data.transforms import Transform

    print("command: python benchmarks/bench_gpu_decode.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-decode-"))
    try:
        paths = files(tmp / "jpg", args.n)
        t = Transform(args.preset, args.size)

        def pil():
            return [t(load_image(p)) for p in paths]

        def dev():
            out = []
            for a in range(0, len(paths), args.batch):
                x, bad = decode_transform([read_bytes(p) for p in paths[a:a + args.batch]], t, "cpu")
                assert not bad
                out.append(x)
            return out

        assert torch.equal(torch.stack(pil()), torch.cat(dev())), "device decode differs from PIL"
        tp, td = best_of(pil, args.repeats), best_of(dev, args.repeats)
        print(f"decode   {args.n} files, {args.preset} {args.size}, {args.threads} thread(s): PIL {args.n / tp:.1f} img/s, "
              f"device-decode on cpu {args.n / td:.1f} img/s, time ratio device/PIL {td / tp:.2f}")
        enc = svgfeat.create_model(args.model)
        kw = dict(encoder=enc, preset=args.preset, size=args.size, batch_size=args.batch, workers=0, device="cpu",
                  progress=False, groups=["latent", "cls"], dtype="fp32")
        times = {}
        for name, gd in (("pil", False), ("device", True)):
            runs = []
            for r in range(args.repeats):
                out = tmp / f"{name}{r}"
                t0 = time.perf_counter()
                svgfeat.extract(tmp / "jpg", out, gpu_decode=gd, **kw)
                runs.append(time.perf_counter() - t0)
            times[name] = min(runs)
        a, b = svgfeat.open_cache(tmp / "pil0"), svgfeat.open_cache(tmp / "device0")
        same = all(np.array_equal(a.read(g), b.read(g)) for g in ("latent", "cls")) and a.paths == b.paths
        print(f"extract  {args.n} files, model {args.model}: PIL {args.n / times['pil']:.1f} img/s, device-decode "
              f"{args.n / times['device']:.1f} img/s, time ratio device/PIL {times['device'] / times['pil']:.2f}; "
              f"caches bit-identical: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
