"""Retrieval: build time, queries/s and recall@10 of Flat / IVF / IVF-PQ / HNSW vs exact brute force.

Baseline measured in the same run: exact search (faiss ``Flat``, BLAS brute force; and svgfeat's exact torch
search, the fallback used when faiss is absent). Every index is built with ``svgfeat.FaissIndex`` at its default
settings (nprobe = max(8, sqrt(nlist)), efSearch = 64, cosine metric). Data: 100k vectors, 1000 held-out queries:

- ``clustered``: a 500-centre Gaussian mixture in 64-d (image features are clustered: this is the realistic case);
- ``uniform``: i.i.d. Gaussian 64-d (no neighbourhood structure: every ANN method loses recall here);
- ``photos`` (``--photos N``, default 500; 0 skips): real cached features of real photos through the
  full-size SVG encoder (golden weights -- RANDOM weights, so the features are not semantic; what is
  measured is the index on real feature geometry). Database: N random crops of the scikit-image /
  scikit-learn sample photos, extracted with ``svgfeat.extract`` into a cache on disk; queries: augmented
  copies (shifted/rescaled crop, flip, brightness, JPEG q 60) of held-out database crops, i.e. near-
  duplicates, so "dup@10" (the source crop is among the 10 results) is meaningful next to recall;
- ``--cache PATH [--group pooled]``: any other real cache (optional).

Both sides of every ratio search the same vectors in memory with the same thread count.

    python benchmarks/bench_retrieval.py [--n 100000] [--d 64] [--threads 1] [--photos 1000 --photo-size 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer  # noqa: E402


def clustered(n, d, clusters=500, spread=0.7, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)


def best_of(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def recall(nbr, truth, k=10):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(nbr, truth)]))


def _photos():
    """Real photographs (uint8 RGB): scikit-image's colour and grey samples and scikit-learn's two."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
             "cat", "skin", "camera", "brick", "grass", "gravel", "moon", "page", "text", "coins", "clock",
             "horse", "microaneurysms"]
    out = []
    for n in names:
        f = getattr(skimage.data, n, None)
        try:
            a = np.asarray(f()) if f else None
        except Exception:  # a sample that needs a download (pooch) is skipped
            a = None
        if a is None:
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        a = a if a.ndim == 3 else np.repeat(a[..., None], 3, 2)
        out.append(np.ascontiguousarray(a[..., :3]).astype(np.uint8))
    out += list(load_sample_images().images)
    return out


def photo_caches(root, n, queries, size, seed=0):
    """(db cache, query cache, source db row of each query) -- real photos through the golden encoder."""
    from PIL import Image, ImageEnhance

    import svgfeat

    gold = Path(__file__).resolve().parents[2] / "shared" / "golden"
    srcs = [Image.fromarray(a) for a in _photos()]
    rng = np.random.default_rng(seed)
    (root / "db").mkdir(parents=True)
    (root / "q").mkdir(parents=True)
    boxes = []
    for i in range(n):
        im = srcs[i % len(srcs)]
        s = rng.uniform(0.25, 0.8)
        w, h = int(im.width * s), int(im.height * s)
        x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
        boxes.append((x, y, w, h))
        im.crop((x, y, x + w, y + h)).resize((160, 160), Image.BICUBIC).save(root / "db" / f"{i:06d}.jpg", quality=90)
    src = np.sort(rng.choice(n, size=queries, replace=False))
    for j, i in enumerate(src):
        im = srcs[i % len(srcs)]
        x, y, w, h = boxes[i]
        dx, dy = (rng.uniform(-0.08, 0.08, 2) * (w, h)).astype(int)
        sc = rng.uniform(0.9, 1.1)
        w2, h2 = min(im.width, int(w * sc)), min(im.height, int(h * sc))
        x2, y2 = int(np.clip(x + dx, 0, im.width - w2)), int(np.clip(y + dy, 0, im.height - h2))
        q = im.crop((x2, y2, x2 + w2, y2 + h2)).resize((160, 160), Image.BICUBIC)
        if rng.random() < 0.5:
            q = q.transpose(Image.FLIP_LEFT_RIGHT)
        q = ImageEnhance.Brightness(q).enhance(rng.uniform(0.8, 1.2))
        q.save(root / "q" / f"{j:06d}.jpg", quality=60)
    enc = svgfeat.load_encoder(dinov3=gold / "dinov3_vits16plus_random.pth", svg=gold / "svg_ae_shared.ckpt",
                               svg_config=gold / "svg_ae_shared.yaml")  # loaded once for both caches
    kw = dict(encoder=enc, size=size, groups=("cls", "pooled"), batch_size=64, progress=False)
    return svgfeat.extract(root / "db", root / "db_cache", **kw), svgfeat.extract(root / "q", root / "q_cache", **kw), src


def run(name, X, Q, factories, k=10, src=None):
    from svgfeat.heads.exact_search import exact_search, l2_normalize
    from svgfeat.heads.retrieval import FaissIndex

    n, d = X.shape
    print(f"\n== {name}: {n} x {d} vectors, {len(Q)} queries, k={k}")
    with Timer() as tb:
        flat = FaissIndex("Flat").fit(X)
    t_exact, (_, truth) = best_of(lambda: flat.search(Q, k))
    Xn, Qn = l2_normalize(X), l2_normalize(Q)
    t_torch, (_, tt) = best_of(lambda: exact_search(Qn, Xn, k), repeats=1)
    assert recall(tt, truth) > 0.999, "torch exact search disagrees with faiss Flat"
    qps_exact = len(Q) / t_exact
    def dup(nbr):
        return "" if src is None else f"{np.mean([s in row[:k] for s, row in zip(src, nbr)]):>8.3f}"

    print(f"{'index':<20}{'build s':>9}{'queries/s':>12}{'x exact':>9}{'recall@10':>11}{'build-time recall':>19}"
          + ("  dup@10" if src is not None else ""))
    print(f"{'exact (faiss Flat)':<20}{tb.seconds:>9.2f}{qps_exact:>12.0f}{1.0:>9.2f}{1.0:>11.3f}{'':>19}" + dup(truth))
    print(f"{'exact (torch)':<20}{0.0:>9.2f}{len(Q) / t_torch:>12.0f}{t_exact / t_torch:>9.2f}{1.0:>11.3f}{'':>19}")
    rows = []
    for f in factories:
        with Timer() as tb:
            idx = FaissIndex(f).fit(X)
        t, (_, nbr) = best_of(lambda idx=idx: idx.search(Q, k))
        r = recall(nbr, truth, k)
        label = idx.factory_ if f != "auto" else f"auto={idx.factory_}"
        built = idx.recall_["recall"] if idx.recall_ else float("nan")
        print(f"{label:<20}{tb.seconds:>9.2f}{len(Q) / t:>12.0f}{t_exact / t:>9.2f}{r:>11.3f}{built:>19.3f}"
              + dup(nbr))
        rows.append((label, tb.seconds, len(Q) / t, t_exact / t, r))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1: stable on shared CPUs)")
    ap.add_argument("--cache", default=None, help="also benchmark real cached features")
    ap.add_argument("--group", default="pooled")
    ap.add_argument("--photos", type=int, default=500, help="real-photo database size (0: skip)")
    ap.add_argument("--photo-queries", type=int, default=100)
    ap.add_argument("--photo-size", type=int, default=64, help="encoder input size for the photo features")
    ap.add_argument("--skip-synthetic", action="store_true")
    a = ap.parse_args(argv)
    print("command: python benchmarks/bench_retrieval.py " + " ".join(sys.argv[1:] if argv is None else argv))

    import faiss

    from svgfeat.heads.index_factory import default_nlist

    faiss.omp_set_num_threads(a.threads)
    t0 = time.perf_counter()
    nlist = default_nlist(a.n)
    from svgfeat.heads.index_factory import auto_factory

    factories = [f"IVF{nlist},Flat", f"IVF{nlist},PQ{a.d // 4}", "HNSW32"]
    print("factory='auto' picks %r for %d x %d vectors (4GB budget): %s" % (*auto_factory(a.n, a.d)[:1], a.n, a.d,
                                                                         auto_factory(a.n, a.d)[1]))
    if not a.skip_synthetic:
        data = clustered(a.n + a.queries, a.d, seed=1)
        run("clustered (500-centre Gaussian mixture)", data[:a.n], data[a.n:], factories)
        rng = np.random.default_rng(2)
        data = rng.standard_normal((a.n + a.queries, a.d)).astype(np.float32)
        run("uniform (i.i.d. Gaussian)", data[:a.n], data[a.n:], [f"IVF{nlist},Flat", "HNSW32"])
    if a.photos:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            db, qc, src = photo_caches(Path(tmp), a.photos, a.photo_queries, a.photo_size)
            print(f"\nphoto caches: {len(db)} database crops + {len(qc)} near-duplicate queries through the golden "
                  f"full-size encoder (RANDOM weights) at {a.photo_size} px in {time.perf_counter() - t:.1f} s")
            for g in ("pooled", "cls"):
                X = db.read(g).astype(np.float32)
                Q = qc.read(g).astype(np.float32)
                nl = default_nlist(len(X))
                run(f"real photos, cached `{g}` features", X, Q, [f"IVF{nl},Flat", "HNSW32", "auto"], src=src)
    if a.cache:
        import svgfeat

        c = svgfeat.open_cache(a.cache)
        X = c.read(a.group).reshape(len(c), -1).astype(np.float32)
        q = np.random.default_rng(0).choice(len(X), size=min(a.queries, len(X)), replace=False)
        run(f"cache {a.cache} group {a.group}", X, X[q], ["HNSW32", "auto"])
    print(f"\ntotal {time.perf_counter() - t0:.1f} s (faiss threads: {a.threads})")


if __name__ == "__main__":
    main()
