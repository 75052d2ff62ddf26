"""AE training checkpoints: weights in svgfeat's safetensors + JSON format, training state beside them.

A checkpoint is a directory ``OUT/checkpoints/step_0001000/``:

- ``encoder.safetensors`` (+ ``encoder.json``): :func:`svgfeat.models.loading.save_encoder` -- residual,
  decoder, mask token (+ the DINOv3 backbone when it was not loaded from a file, e.g. test models), loadable
  with ``svgfeat.load_encoder(svg=..., dinov3=...)``;
- ``train_state.safetensors`` (+ ``train_state.json``): discriminator weights/buffers, both Adam states
  (``opt_ae.state.<i>.<name>``, ``opt_d.*``); the JSON holds step, trainer config, optimizer param groups;
- ``rng_rank<r>.safetensors`` (+ JSON): every rank's torch (CPU and CUDA), numpy and python RNG states.

The directory is written under a temporary name and renamed, and ``latest.json`` is updated last, so an
interrupted save never becomes the resume point. The data order needs no state: it is a function of
(seed, step) (see :mod:`svgfeat.training.ae_data`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import checkpoints as ck
from .. import distributed as D
from ..errors import CheckpointError
from ..regular_files import read_text

FORMAT = "svgfeat-ae-train/1"


# ----------------------------------------------------------------------------------------- optimizers
def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Adam-style state -> ({f"{prefix}.state.{i}.{name}": tensor}, JSON meta {param_groups, scalars})."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str) -> None:
    state: dict = {}
    head = f"{prefix}.state."
    for key, v in tensors.items():
        if key.startswith(head):
            pid, k = key[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------------------- RNG
def rng_state() -> tuple[dict, dict]:
    """This process's RNG states -> (tensors, JSON scalars)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, pstate, gauss_next = random.getstate()
    tensors["python_state"] = torch.tensor(pstate, dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        for k in cuda:
            i = int(k.split(".")[1])
            if i < n:
                torch.cuda.set_rng_state(tensors[k], i)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["python_state"].tolist()), gauss_next))


# ----------------------------------------------------------------------------------------- save / load
def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(root: Path, step: int, enc, disc, opt_ae, opt_d, trainer_config: dict, info: D.DistInfo,
                    include_backbone: bool) -> Path:
    """Collective (every rank calls it): write ``root/step_XXXXXXX`` atomically; returns its path."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path, write_bytes_atomic
    from ..models.loading import save_encoder

    root = Path(root)
    final, tmp = root / checkpoint_name(step), root / f".{checkpoint_name(step)}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # svgfeat's own hidden temp folder of this step, nothing else
        tmp.mkdir(parents=True)
    D.barrier(info)
    try:  # every file fsync'd; a failure (full disk) removes the half-written folder
        rt, rmeta = rng_state()
        with atomic_path(tmp / f"rng_rank{info.rank}.safetensors") as t:
            save_file({k: v.contiguous() for k, v in rt.items()}, str(t))
        write_bytes_atomic(tmp / f"rng_rank{info.rank}.json", json.dumps(rmeta).encode())
        if info.is_main:
            save_encoder(enc, tmp / "encoder.safetensors", include_backbone=include_backbone)
            t_ae, m_ae = optimizer_to_tensors(opt_ae, "opt_ae")
            t_d, m_d = optimizer_to_tensors(opt_d, "opt_d")
            disc_sd = {f"discriminator.{k}": v.detach().cpu().contiguous() for k, v in disc.state_dict().items()}
            meta = {"format": FORMAT, "step": int(step), "world_size": info.world, "config": trainer_config,
                    "opt_ae": m_ae, "opt_d": m_d}
            ck.save_safetensors(tmp / "train_state.safetensors", {**disc_sd, **t_ae, **t_d}, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    D.barrier(info)
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_bytes_atomic(root / "latest.json", json.dumps({"step": int(step), "dir": final.name}).encode())
    D.barrier(info)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    latest = Path(root) / "latest.json"
    if not latest.is_file():
        return None
    try:
        d = Path(root) / json.loads(read_text(latest, "checkpoint pointer", error=CheckpointError))["dir"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{latest} is corrupt: {e}") from None
    if not (d / "train_state.safetensors").is_file():
        raise CheckpointError(f"{latest} points at {d}, which is incomplete or missing")
    return d


def read_meta(ckdir: Path) -> dict:
    meta = ck.read_safetensors_config(Path(ckdir) / "train_state.safetensors")
    if not meta or meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckdir}: not an svgfeat AE training checkpoint (format {meta and meta.get('format')})")
    return meta


def load_checkpoint(ckdir: Path, enc, disc, opt_ae, opt_d, info: D.DistInfo, device) -> int:
    """Restore weights, discriminator, both optimizers and this rank's RNG states; returns the step."""
    ckdir = Path(ckdir)
    meta = read_meta(ckdir)
    own = ck.load_file(ckdir / "encoder.safetensors")
    full = enc.state_dict()
    rest = {k: v for k, v in own.items() if k in full}
    unexpected = set(own) - set(full)
    missing = {k for k in full if not k.startswith("backbone.")} - set(own)
    if unexpected or missing:
        raise CheckpointError(f"{ckdir}/encoder.safetensors does not fit the model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    enc.load_state_dict({**full, **{k: v.to(full[k].dtype) for k, v in rest.items()}}, strict=True)
    tensors = ck.load_file(ckdir / "train_state.safetensors")
    ck.load_strict(disc, ck.strip_prefix(tensors, "discriminator."), "discriminator (resume)", str(ckdir))
    optimizer_from_tensors(opt_ae, tensors, meta["opt_ae"], "opt_ae")
    optimizer_from_tensors(opt_d, tensors, meta["opt_d"], "opt_d")
    for opt in (opt_ae, opt_d):  # Adam keeps its moments on the parameters' device
        for st in opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(device)
    rank = info.rank if (ckdir / f"rng_rank{info.rank}.safetensors").is_file() else 0
    if rank != info.rank or int(meta.get("world_size", 1)) != info.world:
        import warnings

        warnings.warn(f"resuming with {info.world} rank(s) from a checkpoint written by {meta.get('world_size')}: "
                      "dropout randomness will differ from the original run", stacklevel=2)
    set_rng_state(ck.load_file(ckdir / f"rng_rank{rank}.safetensors"),
                  json.loads(read_text(ckdir / f"rng_rank{rank}.json", "RNG state", error=CheckpointError)))
    return int(meta["step"])
