"""ODE samplers for the SVG rectified flow (t=0 noise -> t=1 data) with classifier-free guidance.

Time grid: t_i = shift(i/N, s), i = 0..N (s = 0.15 by default, as the official sampler).
Methods (NFE = model evaluations per sample, cond+uncond batched into ONE forward counts as one):
  euler     z += dt v(z, t_i)                                  1 NFE/step, never evaluates t=1
  heun      official Heun: predictor Euler, corrector at t_{i+1} 2 NFE/step (the last step evaluates t=1)
  midpoint  explicit midpoint (RK2) at t_i + dt/2              2 NFE/step
  ab2       Adams-Bashforth-2 on the non-uniform grid (first step Euler), 1 NFE/step

CFG modes (w = ``cfg``): ``constant``; ``linear`` (w_i = 1+(w-1)(i+1)/N); ``late`` (w when (i+1)/N > 0.5);
``early-<tau>`` (w when the evaluation time t > tau, else 1); ``cfg_star-<K>-<r>`` (steps i < K use
v = -r*v_uncond, i.e. ``cfg_star-1-0`` makes step 0 a no-op, then constant w); ``interval`` (w only
for lo <= t <= hi with ``cfg_interval=(lo, hi)``; ``cfg_interval`` also gates any other mode).
``null_label=None`` disables guidance (conditional velocity only).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .flow import shift_t

METHODS = ("euler", "heun", "midpoint", "ab2")
NFE_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "ab2": 1}


def time_grid(steps: int, shift: float = 0.15, device=None) -> torch.Tensor:
    """float32 [steps+1]: shift(linspace(0,1,steps+1)) computed in float64 then rounded (as the reference)."""
    base = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return shift_t(base, shift).to(torch.float32).to(device)


def parse_cfg_mode(cfg_mode: str) -> tuple:
    """'constant' | 'linear' | 'late' | 'interval' | 'early-<tau>' | 'cfg_star-<K>-<r>' -> (name, *args)."""
    if cfg_mode in ("constant", "linear", "late", "interval"):
        return (cfg_mode,)
    parts = cfg_mode.split("-")
    try:
        if parts[0] == "early" and len(parts) == 2:
            return ("early", float(parts[1]))
        if parts[0] == "cfg_star" and len(parts) == 3:
            return ("cfg_star", int(parts[1]), float(parts[2]))
    except ValueError:
        pass
    raise ConfigError(f"unknown cfg_mode {cfg_mode!r}; expected constant, linear, late, interval, "
                      f"early-<tau> (e.g. early-0.5) or cfg_star-<K>-<r> (e.g. cfg_star-1-0)")


def guidance_at(cfg: float, mode: tuple, step: int, steps: int, t: float, cfg_interval=None):
    """Guidance for one evaluation -> (w, star_ratio): star_ratio is not None when v = -ratio * v_uncond."""
    name = mode[0]
    if name == "cfg_star" and step < mode[1]:
        return 1.0, mode[2]
    if name == "linear":
        w = 1.0 + (cfg - 1.0) * (step + 1) / steps
    elif name == "late":
        w = cfg if (step + 1) / steps > 0.5 else 1.0
    elif name == "early":
        w = cfg if t > mode[1] else 1.0
    else:  # constant, interval, cfg_star after its first K steps
        w = cfg
    if cfg_interval is not None and not (cfg_interval[0] <= t <= cfg_interval[1]):
        w = 1.0
    return w, None


def _to_tokens(z0):
    if z0.dim() == 3:
        return z0, None
    if z0.dim() == 4:
        B, C, h, w = z0.shape
        return z0.flatten(2).transpose(1, 2), (h, w)
    raise ConfigError(f"sample: z0 must be tokens [B,N,C] or a grid [B,C,h,w], got {tuple(z0.shape)}")


@torch.no_grad()
def sample(model, z0, labels, steps: int = 25, cfg: float = 1.0, method: str = "euler", shift: float = 0.15,
           cfg_mode: str = "constant", null_label: int | None = 1000, cfg_interval=None, generator=None,
           progress: bool = False, return_nfe: bool = False):
    """Integrate the flow ODE from noise z0 (t=0) to data (t=1).

    model: callable ``model(x [B,N,C], t [B] float32, y [B] long, grid=(h,w)|None) -> [B,N,>=C]``
        (an SVGDiT; put in eval mode for the duration of sampling).
    z0: start noise, tokens [B,N,C] or grid [B,C,h,w] (float); or a shape tuple, then drawn from
        N(0,I) with ``generator`` (the only randomness; every method here is deterministic).
    labels: long [B] (or a list of ints).
    Returns latents in z0's layout and dtype (and the number of model evaluations if ``return_nfe``).
    """
    if method not in METHODS:
        raise ConfigError(f"sample: unknown method {method!r}; expected one of {METHODS}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sample: steps must be a positive int, got {steps!r}")
    mode = parse_cfg_mode(cfg_mode)
    if mode[0] == "interval" and cfg_interval is None:
        raise ConfigError("sample: cfg_mode='interval' needs cfg_interval=(t_lo, t_hi)")
    if cfg_interval is not None and (len(cfg_interval) != 2 or cfg_interval[0] > cfg_interval[1]):
        raise ConfigError(f"sample: cfg_interval must be (lo, hi) with lo <= hi, got {cfg_interval!r}")
    if isinstance(z0, (tuple, list, torch.Size)):
        dev = generator.device if generator is not None else "cpu"
        z0 = torch.randn(tuple(z0), generator=generator, device=dev)
    z, grid = _to_tokens(z0)
    z = z.float().clone() if z.dtype in (torch.float16, torch.bfloat16) else z.clone()
    B, N, C = z.shape
    dev = z.device
    y = torch.as_tensor(labels, dtype=torch.long, device=dev).reshape(-1)
    if y.shape != (B,):
        raise ConfigError(f"sample: need one label per sample ({B}), got {tuple(y.shape)}")
    y_null = None if null_label is None else torch.full_like(y, int(null_label))
    ts = time_grid(steps, shift, dev)
    tl = ts.tolist()
    wdtype = next((p.dtype for p in model.parameters()), z.dtype) if isinstance(model, torch.nn.Module) else z.dtype
    nfe = [0]

    def call(x, t, lab):
        nfe[0] += 1
        kw = {} if grid is None else {"grid": grid}
        out = model(x.to(wdtype), torch.full((x.shape[0],), t, device=dev, dtype=torch.float32), lab, **kw)
        return out[..., :C].to(z.dtype)

    def velocity(x, t: float, step: int):
        if y_null is None:
            return call(x, t, y)
        w, star = guidance_at(cfg, mode, step, steps, t, cfg_interval)
        if star is not None:
            return torch.zeros_like(x) if star == 0 else -star * call(x, t, y_null)
        if w == 1.0:
            return call(x, t, y)
        vc, vu = call(torch.cat([x, x]), t, torch.cat([y, y_null])).chunk(2)
        return vu + w * (vc - vu)

    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"sampling ({method}, {steps} steps)", leave=False)
    v_prev, h_prev = None, 1.0
    try:
        for i in it:
            t, t1 = tl[i], tl[i + 1]
            dt = ts[i + 1] - ts[i]  # float32 like the reference
            if method == "euler":
                z = z + dt * velocity(z, t, i)
            elif method == "heun":
                v = velocity(z, t, i)
                v1 = velocity(z + dt * v, t1, i)
                z = z + 0.5 * dt * (v + v1)
            elif method == "midpoint":
                v = velocity(z, t, i)
                z = z + dt * velocity(z + 0.5 * dt * v, 0.5 * (t + t1), i)
            else:  # ab2, variable step: z += h[(1 + h/2h') v_i - (h/2h') v_{i-1}]
                v = velocity(z, t, i)
                if v_prev is None:
                    z = z + dt * v
                else:
                    r = float(dt) / (2 * h_prev)
                    z = z + dt * ((1 + r) * v - r * v_prev)
                v_prev, h_prev = v, float(dt)
    finally:
        if was_training:
            model.train()
    out = z.to(z0.dtype)
    if grid is not None:
        out = out.transpose(1, 2).reshape(B, C, *grid)
    return (out, nfe[0]) if return_nfe else out


def solver_nfe(method: str, steps: int) -> int:
    """Model evaluations of ``method`` with ``steps`` steps (without CFG, or with batched CFG)."""
    return NFE_PER_STEP[method] * steps


__all__ = ["sample", "time_grid", "parse_cfg_mode", "guidance_at", "METHODS", "solver_nfe"]
