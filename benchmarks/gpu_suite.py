"""One GPU benchmark suite for ImageNet-scale use (issue J point 7): fits in ~8 minutes on one H200.

Sections (each timed with a device synchronise before and after, on CUDA only):

1. extract   images/s on synthetic ImageNet-like JPEGs (500x375 crops of real photos; a few hundred unique images
             copied to N files), SVG-S+ encoder at 256 px: PIL decode on workers vs device decode (nvJPEG on
             CUDA), fp32 vs bf16. Target: >= 8,000 img/s (best configuration).
2. probe     the DINOv3 linear-probe grid (13 heads, 12,500 iterations at batch 1024) on 1.28M x 768 fp16 features
             read from a feature cache (written with ``svgfeat.cache.from_arrays``) into device memory
             (``cache.to(device)``). Target: the grid in < 60 s.
3. knn       DINO weighted kNN, 50k queries x 1.28M training rows (torch backend on the device).
4. dit       DiT-XL/1 train steps/s at global batch 256 on 392 x 16 x 16 latents read from a cache: streamed
             (prefetching loader, the path for caches larger than RAM) vs device-resident; bf16 autocast.
5. sampler   DiT-XL Euler sampler images (latents) per second, 25 steps, CFG 4 (two forward passes per step).

    python benchmarks/gpu_suite.py                                 # CUDA, full sizes (~8 min on one H200)
    python benchmarks/gpu_suite.py --check --pytest --json gpu_suite.json   # THE one-call GPU check (< 8 min, H100)
    python benchmarks/gpu_suite.py --device cpu --small            # smoke test on CPU (a minute or two)
    python benchmarks/gpu_suite.py --only probe,knn --json out.json

``--check``: reduced sizes (every section, a fraction of the full work) so that ``--pytest`` (the CUDA test
suite, ``pytest -m gpu``, run FIRST) and the benchmarks fit in 8 minutes on one H100; ``--budget-s`` (default
480 with --check) skips the sections that would start after the budget is spent, and says so.

Random weights (or ``--dinov3/--svg`` real files): throughput does not depend on the weights. Data are synthetic
(class-conditional Gaussians for features, Gaussian latents), so accuracies are not comparable to ImageNet.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import photo_folder  # noqa: E402

TARGET_EXTRACT_IMG_S = 8000.0
TARGET_PROBE_S = 60.0

FULL = dict(extract_n=32768, extract_unique=512, size=256, batch=512, shard=8192, workers=min(14, os.cpu_count() or 1),
            encoder="svg_vits16plus", probe_rows=1_281_167, val_rows=50_000, dim=768, classes=1000,
            probe_iters=12_500, probe_batch=1024, dit="svg_dit_xl", latent_rows=8192, dit_batch=256,
            dit_steps=20, sample_batch=256, sample_steps=25)
CHECK = dict(extract_n=4096, extract_unique=256, size=256, batch=256, shard=4096, workers=min(14, os.cpu_count() or 1),
             encoder="svg_vits16plus", probe_rows=262_144, val_rows=10_000, dim=768, classes=1000,
             probe_iters=2_000, probe_batch=1024, dit="svg_dit_xl", latent_rows=2048, dit_batch=256,
             dit_steps=10, sample_batch=64, sample_steps=25)
SMALL = dict(extract_n=16, extract_unique=4, size=64, batch=8, shard=8, workers=1, encoder="svg_vits16plus",
             probe_rows=4096, val_rows=512, dim=768, classes=10, probe_iters=30, probe_batch=256,
             dit="test_dit_tiny", latent_rows=64, dit_batch=8, dit_steps=2, sample_batch=4, sample_steps=4)


class Clock:
    """Wall time of a block, synchronising the device first and last when it is CUDA."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def peak_gpu_gib(device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**30, 2)


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def has_from_arrays() -> bool:
    import svgfeat.cache

    return hasattr(svgfeat.cache, "from_arrays")


# --------------------------------------------------------------------------------------------- 1 extract
def jpeg_folder(root: Path, n: int, unique: int) -> Path:
    """``n`` JPEG files: ``unique`` distinct ImageNet-like photos, copied (decode cost is per file)."""
    src = photo_folder(root / "_unique", unique)
    out = root / "imgs"
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.jpg"))
    for i in range(n):
        shutil.copyfile(files[i % len(files)], out / f"img_{i:06d}.jpg")
    return out


def _extract(folder, out, enc, device, cfg, precision: str, gpu_decode: bool, limit=None, compile=False):
    """One extraction through the public ``svgfeat.extract``; adapts to its numerics argument
    (``precision="fp32"|"bf16"`` in the engine API, ``autocast=bool`` before it)."""
    from svgfeat.extraction import extract

    params = inspect.signature(extract).parameters
    kw = dict(encoder=enc, size=cfg["size"], batch_size=cfg["batch"], shard_size=cfg["shard"], workers=cfg["workers"],
              device=device, progress=False, groups=["latent", "cls", "pooled"], limit=limit)
    if "precision" in params:
        kw["precision"] = precision
    elif "autocast" in params:
        kw["autocast"] = precision == "bf16"
    if gpu_decode:
        if "gpu_decode" not in params:
            raise RuntimeError("this svgfeat.extract has no gpu_decode option")
        kw["gpu_decode"] = True
    if compile:
        if "compile" not in params:
            raise RuntimeError("this svgfeat.extract has no compile option")
        kw["compile"] = True
    return extract(str(folder), out, **kw)


def bench_extract(args, cfg, tmp: Path) -> dict:
    import svgfeat

    dev = args.device
    if args.dinov3:
        enc = svgfeat.load_encoder(dinov3=args.dinov3, svg=args.svg, device=dev)
    else:
        enc = svgfeat.create_model(cfg["encoder"]).to(dev)
    t = time.perf_counter()
    folder = jpeg_folder(tmp / "jpegs", cfg["extract_n"], cfg["extract_unique"])
    print(f"  {cfg['extract_n']} JPEGs written in {time.perf_counter() - t:.1f}s", flush=True)
    res = {}
    for name, gd, prec, comp in [("pil fp32", False, "fp32", False), ("pil bf16", False, "bf16", False),
                                 ("device-decode fp32", True, "fp32", False),
                                 ("device-decode bf16", True, "bf16", False),
                                 ("device-decode bf16 compile", True, "bf16", True)]:
        try:
            _extract(folder, tmp / f"warm_{name.replace(' ', '_')}", enc, dev, cfg, prec, gd,
                     limit=min(cfg["extract_n"], cfg["batch"]), compile=comp)  # context, kernels, compile
            reset_peak(dev)
            with Clock(dev) as c:
                cache = _extract(folder, tmp / name.replace(" ", "_"), enc, dev, cfg, prec, gd, compile=comp)
            n = len(cache)
            res[name] = {"n": n, "seconds": round(c.seconds, 2), "img_s": round(n / c.seconds, 1),
                         "peak_gpu_gib": peak_gpu_gib(dev)}
            shutil.rmtree(tmp / name.replace(" ", "_"), ignore_errors=True)
        except Exception as e:  # noqa: BLE001 - report and continue with the other configurations
            res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        print(f"  {name:<20} {res[name]}", flush=True)
    ok = [v["img_s"] for v in res.values() if "img_s" in v]
    base = res.get("pil fp32", {}).get("img_s")
    if base:
        for v in res.values():
            if "img_s" in v:
                v["ratio_vs_pil_fp32"] = round(v["img_s"] / base, 2)
    best = max(ok) if ok else None
    return {"configs": res, "best_img_s": best, "target_img_s": TARGET_EXTRACT_IMG_S,
            "meets_target": None if args.small else (best is not None and best >= TARGET_EXTRACT_IMG_S),
            "encoder": "files given" if args.dinov3 else f"{cfg['encoder']} (random weights)", "size": cfg["size"]}


# --------------------------------------------------------------------------------------------- 2/3 features
def synthetic_features(n, dim, classes, device, seed, chunk=131072):
    """fp16 features [n, dim] (class centre + noise, generated on ``device``) and int64 labels [n]."""
    g = torch.Generator(device=device).manual_seed(seed)
    means = torch.randn(classes, dim, generator=g, device=device) * 0.1
    y = torch.randint(0, classes, (n,), generator=g, device=device)
    X = torch.empty(n, dim, dtype=torch.float16, device=device)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        X[a:b] = (means[y[a:b]] + 0.5 * torch.randn(b - a, dim, generator=g, device=device)).half()
    return X, y


def feature_caches(args, cfg, tmp: Path) -> dict:
    """Train / val caches of cls+pooled written with from_arrays, then loaded into device memory."""
    dev, d = args.device, cfg["dim"]
    out = {}
    for split, n, seed in (("train", cfg["probe_rows"], 0), ("val", cfg["val_rows"], 1)):
        X, y = synthetic_features(n, d, cfg["classes"], dev, seed)
        if has_from_arrays():
            from svgfeat.cache import from_arrays, open_cache

            Xc = X.cpu().numpy()
            t = time.perf_counter()
            from_arrays(tmp / split, {"cls": Xc[:, :d // 2], "pooled": Xc[:, d // 2:]}, labels=y.cpu().numpy(),
                        classes=[f"c{i}" for i in range(cfg["classes"])], shard_size=1024)
            t_write = time.perf_counter() - t
            del Xc, X
            cache = open_cache(tmp / split)
            with Clock(dev) as c:
                groups = cache.to(dev, ["cls", "pooled"])
            out[split] = dict(groups=groups, y=torch.as_tensor(cache.labels), write_s=round(t_write, 1),
                              to_device_s=round(c.seconds, 2), source="cache (from_arrays) -> cache.to(device)")
        else:  # before svgfeat.cache.from_arrays exists: the same data, device-resident, without the cache round trip
            out[split] = dict(groups={"cls": X[:, :d // 2], "pooled": X[:, d // 2:]}, y=y.cpu(), write_s=None,
                              to_device_s=None, source="synthetic on device (no from_arrays in this svgfeat)")
    return out


def bench_probe(args, cfg, feats) -> dict:
    from svgfeat.heads.probe import LinearProbe

    dev = args.device
    tr, va = feats["train"], feats["val"]
    p = LinearProbe(features="cls+pooled", iterations=cfg["probe_iters"], min_iterations=0,
                    batch_size=cfg["probe_batch"], device=dev, select_on="val", random_state=0)
    reset_peak(dev)
    with Clock(dev) as c:
        p.fit(tr["groups"], tr["y"].numpy(), X_val=torch.cat([va["groups"]["cls"], va["groups"]["pooled"]], 1),
              y_val=va["y"].numpy())
    best = p.report()["best"]
    return {"rows": cfg["probe_rows"], "dim": cfg["dim"], "heads": 13, "iterations": cfg["probe_iters"],
            "batch": cfg["probe_batch"], "seconds": round(c.seconds, 2), "target_s": TARGET_PROBE_S,
            "meets_target": None if args.small else c.seconds < TARGET_PROBE_S, "best_val_top1": round(best["top1"], 2),
            "peak_gpu_gib": peak_gpu_gib(dev), "data": tr["source"], "cache_write_s": tr["write_s"],
            "cache_to_device_s": tr["to_device_s"]}


def bench_probe_resident(args, cfg, feats) -> dict:
    """The device-resident probe trainer (issue R point 2): features z-scored once into bf16 device memory, the
    13-head DINOv3 grid as one matmul per step, batches gathered by index on the device, no host sync per step.
    Target: 13 heads x 12,500 steps at batch 1024 on 1.28M x 768 in <= 10 s (the training loop)."""
    from svgfeat.heads._base import DINOV3_LRS
    from svgfeat.heads._grid import BatchOrder, FeatureNorm, GridConfig, evaluate_grid
    from svgfeat.heads._resident import resident_matrix, train_grid_resident

    target_s, dev = 10.0, args.device
    tr, va = feats["train"], feats["val"]
    X = torch.cat([tr["groups"]["cls"], tr["groups"]["pooled"]], 1)
    n, bs = len(X), cfg["probe_batch"]
    y = torch.as_tensor(tr["y"], dtype=torch.int64).to(dev)
    rows = np.arange(n)
    norm = FeatureNorm.zscore(X, torch.arange(n, device=X.device))
    reset_peak(dev)
    with Clock(dev) as c_copy:
        Xd = resident_matrix(X, dev, torch.bfloat16, norm.mean, norm.scale)
    del X
    order = BatchOrder(rows, rows, np.zeros(n, np.int64), 0)
    gcfg = GridConfig(lrs=tuple(lr * bs / 256 for lr in DINOV3_LRS), wds=(0.0,) * len(DINOV3_LRS),
                      steps=cfg["probe_iters"], batch_size=bs)
    with Clock(dev) as c:
        grid = train_grid_resident(Xd, y, order, cfg["classes"], gcfg)
    W, b = grid.weights()
    Xv = torch.cat([va["groups"]["cls"], va["groups"]["pooled"]], 1)
    yv = torch.as_tensor(va["y"], dtype=torch.int64)
    top1, _ = evaluate_grid(W, b, Xv, yv, norm.to(dev))
    return {"rows": n, "dim": int(Xd.shape[1]), "heads": len(DINOV3_LRS), "iterations": cfg["probe_iters"],
            "batch": bs, "feature_dtype": "bfloat16", "to_device_s": round(c_copy.seconds, 2),
            "seconds": round(c.seconds, 2), "target_s": target_s,
            "meets_target": None if args.small else c.seconds <= target_s,
            "best_val_top1": round(float(top1.max()), 2), "peak_gpu_gib": peak_gpu_gib(dev)}


def bench_knn(args, cfg, feats) -> dict:
    from svgfeat.heads.knn import KNNClassifier

    dev = args.device
    tr, va = feats["train"], feats["val"]
    knn = KNNClassifier(k=(10, 20), features="cls+pooled", backend="torch", device=dev)
    reset_peak(dev)
    with Clock(dev) as c_fit:
        knn.fit(tr["groups"], tr["y"].numpy())
    with Clock(dev) as c_eval:
        res = knn.evaluate(va["groups"], va["y"].numpy())
    return {"train": cfg["probe_rows"], "queries": cfg["val_rows"], "fit_s": round(c_fit.seconds, 2),
            "search_vote_s": round(c_eval.seconds, 2), "queries_s": round(cfg["val_rows"] / c_eval.seconds, 1),
            "top1_k20": round(res["k"]["20"]["top1"], 2), "peak_gpu_gib": peak_gpu_gib(dev)}


# --------------------------------------------------------------------------------------------- 4/5 DiT
def latent_cache(args, cfg, tmp: Path):
    n, dev = cfg["latent_rows"], args.device
    g = torch.Generator(device=dev).manual_seed(2)
    lat = torch.randn(n, 392, 16, 16, generator=g, device=dev).half().cpu().numpy()
    labels = np.arange(n, dtype=np.int64) % 1000
    if has_from_arrays():
        from svgfeat.cache import from_arrays, open_cache

        from_arrays(tmp / "latent", {"latent": lat}, labels=labels, shard_size=1024)
        return open_cache(tmp / "latent"), "cache (from_arrays)"

    class Arrays:  # the cache protocol train_dit reads (before from_arrays exists)
        def __init__(self):
            self.labels = labels

        def __len__(self):
            return n

        def read(self, group, rows=None):
            return lat if rows is None else lat[rows]

        def latent_stats(self):
            return None

    return Arrays(), "in-memory arrays (no from_arrays in this svgfeat)"


def bench_dit(args, cfg, tmp: Path) -> tuple[dict, object]:
    from svgfeat.generation.flow import flow_loss_from_noise
    from svgfeat.generation.train import LatentBatcher, step_noise
    from svgfeat.models.build import create_model

    dev = torch.device(args.device)
    cache, source = latent_cache(args, cfg, tmp)
    torch.manual_seed(0)
    kw = dict(in_channels=392, input_size=16) if cfg["dit"] != "test_dit_tiny" else \
        dict(in_channels=392, input_size=16, num_classes=1000)
    model = create_model(cfg["dit"], **kw).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stats = {"mean": np.zeros(392, np.float32), "std": np.ones(392, np.float32)}
    B, amp = cfg["dit_batch"], dev.type == "cuda"
    out = {"model": cfg["dit"], "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
           "batch": B, "latent_rows": cfg["latent_rows"], "data": source}
    reset_peak(dev)
    for mode, limit in (("streamed", 0), ("device-resident", 1 << 62)):
        data = LatentBatcher(cache, B, 0, stats, model.num_classes, dev, preload_limit=limit)

        def step(s, data=data):
            t, x0, drop, _ = step_noise(s, 0, B, 256, 392, 0.4, model.y_embedder.dropout_prob, dev)
            x1, y = data.batch(s, 0, B)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = flow_loss_from_noise(model, x1, y, t, x0, drop, grid=(16, 16))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for s in range(2):  # warm-up (kernels, allocator, prefetch queue)
            step(s)
        with Clock(dev) as c:
            for s in range(2, 2 + cfg["dit_steps"]):
                step(s)
        data.close()
        out[f"{mode}_steps_s"] = round(cfg["dit_steps"] / c.seconds, 3)
        print(f"  DiT {mode}: {out[f'{mode}_steps_s']} steps/s", flush=True)
    out["streamed_vs_resident"] = round(out["streamed_steps_s"] / out["device-resident_steps_s"], 3)
    out["peak_gpu_gib"] = peak_gpu_gib(dev)
    return out, model.eval()


def bench_sampler(args, cfg, model) -> dict:
    from svgfeat.generation import sample

    dev = torch.device(args.device)
    B = cfg["sample_batch"]
    g = torch.Generator(device=dev).manual_seed(3)
    z0 = torch.randn(B, 256, 392, generator=g, device=dev)
    y = torch.arange(B, device=dev) % model.num_classes
    amp = dev.type == "cuda"
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        sample(model, z0[:2], y[:2], steps=2, cfg=4.0, null_label=model.num_classes)  # warm-up
        with Clock(dev) as c:
            sample(model, z0, y, steps=cfg["sample_steps"], cfg=4.0, null_label=model.num_classes)
    return {"batch": B, "steps": cfg["sample_steps"], "cfg": 4.0, "seconds": round(c.seconds, 2),
            "img_s": round(B / c.seconds, 2), "note": "latents per second (decoder not included)"}


# --------------------------------------------------------------------------------------------- 0 tests
def run_pytest(dev) -> dict:
    """The CUDA test suite (``pytest -m gpu``) in a child process: counts of passed/failed/skipped."""
    import re
    import subprocess

    if dev.type != "cuda":
        return {"skipped": "the gpu tests need --device cuda"}
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], cwd=root,
                       capture_output=True, text=True)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail)}
    if r.returncode not in (0, 5):
        print(r.stdout[-6000:], flush=True)
        raise RuntimeError(f"pytest -m gpu failed: {tail}")
    return {"summary": tail, **counts}


# --------------------------------------------------------------------------------------------- main
def _verdict(ok) -> str:
    return "n/a at --small sizes" if ok is None else ("met" if ok else "NOT met")


SECTIONS = ("extract", "probe", "knn", "dit", "sampler")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="Tiny sizes (CPU smoke test).")
    ap.add_argument("--check", action="store_true", help="Reduced sizes: with --pytest, < 8 min on one H100.")
    ap.add_argument("--pytest", action="store_true", help="Run the CUDA test suite (pytest -m gpu) first.")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="Skip sections that would start after this many seconds (default 480 with --check).")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"Comma-separated subset of {','.join(SECTIONS)}.")
    ap.add_argument("--workers", type=int, default=None, help="Extraction decode workers.")
    ap.add_argument("--dinov3", default=None, help="Real DINOv3 weights for the extraction encoder (optional).")
    ap.add_argument("--svg", default=None, help="Real SVG residual weights (with --dinov3).")
    ap.add_argument("--tmp", default=None, help="Scratch folder (default: a temporary folder).")
    ap.add_argument("--json", default=None, help="Write the results here too.")
    args = ap.parse_args(argv)
    cfg = dict(SMALL if args.small else CHECK if args.check else FULL)
    budget = args.budget_s if args.budget_s is not None else (480.0 if args.check else None)
    if args.workers is not None:
        cfg["workers"] = args.workers
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown sections {bad}; expected some of {SECTIONS}")
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"gpu_suite on {name}; {'small' if args.small else 'full'} sizes; torch {torch.__version__}", flush=True)
    results: dict = {"device": name, "small": args.small, "sections": {}}
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="svgfeat-gpu-suite-", dir=args.tmp))
    failed = []

    def run(section, fn):
        print(f"[{section}]", flush=True)
        spent = time.perf_counter() - t_all
        if budget is not None and spent > budget:
            r = {"skipped": f"budget of {budget:.0f} s spent ({spent:.0f} s)"}
            results["sections"][section] = r
            print(f"  -> {r}", flush=True)
            return r
        t = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
            traceback.print_exc()
            failed.append(section)
            r = {"error": f"{type(e).__name__}: {e}"}
        if isinstance(r, dict) and section != "features":
            r["section_s"] = round(time.perf_counter() - t, 1)
            results["sections"][section] = r
            print(f"  -> {json.dumps(r, default=lambda o: f'<{type(o).__name__}>')}", flush=True)
        return r

    try:
        if args.pytest:
            run("pytest", lambda: run_pytest(dev))
        if "extract" in only:
            run("extract", lambda: bench_extract(args, cfg, tmp))
        if "probe" in only or "knn" in only:
            feats = run("features", lambda: feature_caches(args, cfg, tmp))
            if "error" not in feats and "skipped" not in feats:
                summary = {k: {kk: vv for kk, vv in v.items() if kk not in ("groups", "y")} for k, v in feats.items()}
                results["sections"]["features"] = summary
                if "probe" in only:
                    run("probe", lambda: bench_probe(args, cfg, feats))
                    run("probe-resident", lambda: bench_probe_resident(args, cfg, feats))
                if "knn" in only:
                    run("knn", lambda: bench_knn(args, cfg, feats))
            feats = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if "dit" in only or "sampler" in only:
            holder = {}

            def dit():
                r, holder["model"] = bench_dit(args, cfg, tmp)
                return r

            run("dit", dit)
            if "sampler" in only and "model" in holder:
                run("sampler", lambda: bench_sampler(args, cfg, holder["model"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - t_all, 1)
    s = results["sections"]
    print("\nsummary")
    if "summary" in s.get("pytest", {}):
        print(f"  pytest -m gpu: {s['pytest']['summary']}")
    if "best_img_s" in s.get("extract", {}):
        e = s["extract"]
        print(f"  extraction: best {e['best_img_s']} img/s (target >= {TARGET_EXTRACT_IMG_S:.0f}: "
              f"{_verdict(e['meets_target'])}); " +
              ", ".join(f"{k} {v.get('img_s', v.get('error'))}" for k, v in e["configs"].items()))
    if "seconds" in s.get("probe", {}):
        p = s["probe"]
        print(f"  probe grid: {p['seconds']} s for {p['heads']} heads x {p['iterations']} it on {p['rows']} x "
              f"{p['dim']} (target < {TARGET_PROBE_S:.0f} s: {_verdict(p['meets_target'])})")
    if "fit_s" in s.get("knn", {}):
        k = s["knn"]
        print(f"  kNN: {k['queries']} x {k['train']}: fit {k['fit_s']} s, search+vote {k['search_vote_s']} s "
              f"({k['queries_s']} queries/s)")
    if "streamed_steps_s" in s.get("dit", {}):
        d = s["dit"]
        print(f"  DiT {d['model']} batch {d['batch']}: {d['streamed_steps_s']} steps/s streamed from the cache, "
              f"{d['device-resident_steps_s']} device-resident (ratio {d['streamed_vs_resident']})")
    if "img_s" in s.get("sampler", {}):
        print(f"  sampler: {s['sampler']['img_s']} img/s ({s['sampler']['steps']} Euler steps, CFG 4)")
    print(f"  total {results['total_s']} s; failed sections: {failed or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
