"""Generation benchmarks (run: ``python benchmarks/bench_generation.py``; ~1-2 min on a 2-core CPU).

1. DiT training step on cached latents vs encoding the images on the fly with the SVG encoder
   (the full-size golden encoder when ../shared/golden exists, else the tiny registered one). Equal
   storage: both sides read from disk every step -- the cached row through the real FeatureCache with
   the batcher's RAM preload switched off (a preloaded row is printed too), the online row decodes the
   JPEGs from disk; no augmentation on either side; same DiT step.
2. Samplers at matched quality: a tiny DiT is trained for a few hundred steps on a synthetic
   class-conditional latent set; quality = RMS distance of the endpoint to a reference that belongs to
   none of the contenders: an adaptive RK45 solve (scipy.integrate.solve_ivp, rtol = atol = 1e-6) of the
   same ODE on the flattened state (CFG 1.5 constant, shift irrelevant for the exact solution). For each
   solver we find the fewest steps that match Euler-25, then time Euler-25 vs that solver on the
   golden-size DiT (images/s). Both velocity fields are toys (a tiny DiT on synthetic latents and a
   random-weight DiT): the step counts are not a claim about a trained SVG-XL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT.parent / "shared" / "golden"

from svgfeat.generation.flow import flow_loss_from_noise  # noqa: E402
from svgfeat.generation.sampling import sample  # noqa: E402
from svgfeat.generation.train import LatentBatcher, step_noise  # noqa: E402
from svgfeat.models.build import load_dit  # noqa: E402
from svgfeat.models.dit import SVGDiT, test_dit_tiny  # noqa: E402


def timeit(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


class ArrayCache:
    """The cache protocol over an in-memory array (for the synthetic set)."""

    def __init__(self, lat, labels):
        self._lat, self.labels = lat, labels

    def __len__(self):
        return len(self.labels)

    def read(self, group, rows=None):
        return self._lat if rows is None else self._lat[np.asarray(rows)]

    def latent_stats(self):
        x = self._lat.astype(np.float64)
        return {"mean": x.mean(axis=(0, 2, 3)), "std": x.std(axis=(0, 2, 3))}


# ---------------------------------------------------------------------------------------------- 1
def bench_training(batch: int, reps: int) -> dict:
    from svgfeat.extraction import extract
    from svgfeat.models.build import create_model, load_encoder

    if (GOLDEN / "svg_ae_shared.ckpt").is_file():
        enc = load_encoder(dinov3=GOLDEN / "dinov3_vits16plus_random.pth", svg=GOLDEN / "svg_ae_shared.ckpt",
                           svg_config=GOLDEN / "svg_ae_shared.yaml")
        size, enc_name = 256, "golden full-size DINOv3-S+/16 + residual ViT (random weights)"
        dit = load_dit(GOLDEN / "svg_dit_shared.pt").train()
        dit_name = "golden DiT (hidden 384, depth 2, 392 ch, 16x16)"
    else:
        enc, size, enc_name = create_model("test_tiny"), 64, "test_tiny"
        dit, dit_name = test_dit_tiny(in_channels=enc.latent_channels, input_size=size // 16), "test_dit_tiny"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = extract("sample:photos", Path(tmp) / "c", encoder=enc, size=size, limit=batch,
                        groups=("latent",), batch_size=batch, progress=False)
        t_extract = time.perf_counter() - t0
        import svgfeat.generation.train as gtrain
        from svgfeat.cache.stats import compute_stats

        compute_stats(cache.root)  # `svgfeat stats`: the batcher normalises with the cache's own statistics
        cache = type(cache)(cache.root)

        limit = gtrain.PRELOAD_LIMIT
        gtrain.PRELOAD_LIMIT = 0  # equal storage: the cached row reads its shards from disk every step
        try:
            data = LatentBatcher(cache, batch, 0, None, dit.num_classes, "cpu")
        finally:
            gtrain.PRELOAD_LIMIT = limit
        assert data.data is None
        ram = LatentBatcher(cache, batch, 0, None, dit.num_classes, "cpu")  # preloaded (the default when small)
        opt = torch.optim.AdamW([p for p in dit.parameters() if p.requires_grad], lr=1e-4)
        N, C = data.h * data.w, data.C
        from svgfeat.data import open_dataset
        from svgfeat.data.transforms import preprocess

        ds = open_dataset("sample:photos")

        def dit_step(x1, y, step):
            t, x0, drop, _ = step_noise(step, 0, batch, N, C, 0.4, 0.1, "cpu")
            loss = flow_loss_from_noise(dit, x1, y, t, x0, drop, grid=(data.h, data.w))
            opt.zero_grad()
            loss.backward()
            opt.step()

        def cached():
            x1, y = data.batch(0, 0, batch)
            dit_step(x1, y, 0)

        def cached_ram():
            x1, y = ram.batch(0, 0, batch)
            dit_step(x1, y, 0)

        def online():
            imgs = [ds.load(i) for i in range(batch)]  # decoded from disk every step, like the cache reads
            x = preprocess(imgs, preset="svg", size=size)
            z = enc.encode(x).latent
            tok = (z.float().flatten(2).transpose(1, 2) - data.mean) / data.std
            dit_step(tok, torch.zeros(batch, dtype=torch.long), 0)

        t_cached = timeit(cached, reps)
        t_ram = timeit(cached_ram, reps)
        t_online = timeit(online, max(1, reps // 2))
    return dict(encoder=enc_name, dit=dit_name, batch=batch, extract_s=t_extract, cached_step_s=t_cached,
                cached_ram_step_s=t_ram, online_step_s=t_online, ratio=t_online / t_cached)


# ---------------------------------------------------------------------------------------------- 2
def train_tiny(steps: int) -> SVGDiT:
    rng = np.random.default_rng(0)
    n, C, s, K = 512, 32, 8, 10
    labels = rng.integers(0, K, n)
    protos = rng.normal(size=(K, 2, C, s, s)) * 1.5
    pick = rng.integers(0, 2, n)  # two modes per class: curved trajectories
    lat = (protos[labels, pick] + 0.4 * rng.normal(size=(n, C, s, s))).astype(np.float32)
    torch.manual_seed(0)
    m = test_dit_tiny(in_channels=C, input_size=s, num_classes=K, hidden_size=128, depth=3, num_heads=4)
    data = LatentBatcher(ArrayCache(lat, labels), 32, 0, None, K, "cpu")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m.train()
    for step in range(steps):
        t, x0, drop, _ = step_noise(step, 0, 32, s * s, C, 0.4, 0.1, "cpu")
        x1, y = data.batch(step, 0, 32)
        loss = flow_loss_from_noise(m, x1, y, t, x0, drop)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@torch.no_grad()
def rk45_reference(m, z0, y, cfg: float, tol: float = 1e-6):
    """Endpoint of dz/dt = v_cfg(z, t), t: 0 -> 1, by scipy's adaptive RK45 on the flattened state
    (float64 state, the model in float32). Returns (z1 like z0, number of model evaluations)."""
    from scipy.integrate import solve_ivp

    shape, C = z0.shape, z0.shape[-1]
    y_null = torch.full_like(y, m.num_classes)
    B = shape[0]

    def f(t, zf):
        x = torch.from_numpy(zf.reshape(shape)).float()
        tt = torch.full((2 * B,), float(t))
        vc, vu = m(torch.cat([x, x]), tt, torch.cat([y, y_null]))[..., :C].chunk(2)
        return (vu + cfg * (vc - vu)).double().numpy().ravel()

    was = m.training
    m.eval()
    sol = solve_ivp(f, (0.0, 1.0), z0.double().numpy().ravel(), method="RK45", rtol=tol, atol=tol)
    m.train(was)
    if not sol.success:
        raise RuntimeError(f"RK45 reference failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].reshape(shape)).float(), int(sol.nfev)


def bench_solvers(m, z0, y, cfg: float, shift: float, ref_steps: int = 200) -> dict:
    """Fewest steps per solver whose RMS distance to an adaptive RK45 reference <= Euler-25's."""
    kw = dict(cfg=cfg, shift=shift, null_label=m.num_classes)
    ref, nfev = rk45_reference(m, z0, y, cfg)
    mid = sample(m, z0, y, steps=ref_steps, method="midpoint", **kw)
    print(f"[solvers] reference: RK45 rtol=atol=1e-6, {nfev} evaluations; midpoint-{ref_steps} differs from it "
          f"by RMS {((mid - ref) ** 2).mean().sqrt().item():.3g}", flush=True)

    def err(method, steps):
        return ((sample(m, z0, y, steps=steps, method=method, **kw) - ref) ** 2).mean().sqrt().item()

    target = err("euler", 25)
    out = {"euler_25_rms": target, "solvers": {}}
    for method in ("ab2", "midpoint", "heun"):
        for steps in range(2, 26):
            e = err(method, steps)
            if e <= target:
                nfe = steps * (1 if method == "ab2" else 2)
                out["solvers"][method] = dict(steps=steps, nfe=nfe, rms=e)
                break
        else:
            out["solvers"][method] = dict(steps=None, nfe=None, rms=err(method, 25))
    return out


def time_solvers(best: dict, batch: int, cfg: float, shift: float) -> dict:
    if (GOLDEN / "svg_dit_shared.pt").is_file():
        m, name = load_dit(GOLDEN / "svg_dit_shared.pt"), "golden DiT (384/2, 392 ch, 16x16)"
    else:
        torch.manual_seed(0)
        m, name = test_dit_tiny().eval(), "test_dit_tiny (random)"
    z0 = torch.randn(batch, 256, m.in_channels, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 1000
    kw = dict(cfg=cfg, shift=shift, null_label=m.num_classes)
    res = {"model": name, "batch": batch}
    t = timeit(lambda: sample(m, z0, y, steps=25, method="euler", **kw), 1, warmup=0)
    res["euler_25_img_s"] = batch / t
    for method, b in best.items():
        if b["steps"] is None:
            continue
        tm = timeit(lambda method=method, b=b: sample(m, z0, y, steps=b["steps"], method=method, **kw), 1, warmup=0)
        res[f"{method}_{b['steps']}_img_s"] = batch / tm
        res[f"{method}_speedup"] = t / tm
    return res


def report(what: str, sv: dict) -> None:
    print(f"[solvers] {what}: Euler-25 RMS to the reference {sv['euler_25_rms']:.4g}")
    for method, b in sv["solvers"].items():
        print(f"[solvers]   {method}: reaches Euler-25 quality at {b['steps']} steps = {b['nfe']} NFE "
              f"(RMS {b['rms']:.4g}) vs 25 NFE", flush=True)


def main():
    print("command: python benchmarks/bench_generation.py " + " ".join(sys.argv[1:]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--golden-quality", action="store_true", help="Also measure solver quality on the golden DiT.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tr = bench_training(args.batch, args.reps)
    print(f"[train] encoder: {tr['encoder']}; DiT: {tr['dit']}; batch {tr['batch']}")
    print(f"[train] one-time extraction of {tr['batch']} images: {tr['extract_s']:.2f} s")
    print(f"[train] step on cached latents read from disk: {tr['cached_step_s'] * 1e3:.1f} ms (preloaded in RAM: "
          f"{tr['cached_ram_step_s'] * 1e3:.1f} ms); encoding on the fly (JPEGs from disk): "
          f"{tr['online_step_s'] * 1e3:.1f} ms; ratio on-the-fly / cached-from-disk = {tr['ratio']:.1f}x")
    m = train_tiny(args.train_steps)
    z0 = torch.randn(16, m.config.input_size ** 2, m.in_channels, generator=torch.Generator().manual_seed(1))
    sv = bench_solvers(m, z0, torch.arange(16) % 10, 1.5, 0.15)
    report(f"tiny DiT trained {args.train_steps} steps on synthetic latents", sv)
    if args.golden_quality and (GOLDEN / "svg_dit_shared.pt").is_file():
        g = load_dit(GOLDEN / "svg_dit_shared.pt")
        z0 = torch.randn(1, 256, 392, generator=torch.Generator().manual_seed(1))
        report("golden DiT (random weights), reference RK45",
               bench_solvers(g, z0, torch.tensor([207]), 1.5, 0.15, ref_steps=100))
    tm = time_solvers(sv["solvers"], args.batch, 1.5, 0.15)
    print(f"[sampling] {tm['model']}, batch {tm['batch']}, CFG 1.5 (batched): Euler-25 {tm['euler_25_img_s']:.2f} img/s")
    for method, b in sv["solvers"].items():
        if b["steps"] is not None:
            ips = tm[f"{method}_{b['steps']}_img_s"]
            print(f"[sampling] {method}-{b['steps']}: {ips:.2f} img/s, "
                  f"speed ratio vs Euler-25 = {tm[f'{method}_speedup']:.2f}x")
    sys.stdout.flush()
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
