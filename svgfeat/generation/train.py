"""Train an SVG DiT with flow matching on cached latents (single process, or DDP under ``torchrun``).

Determinism: everything random is a pure function of (seed, step): the data order (one permutation of
the cache rows per epoch) and, per step, the times, noise, label-dropout and flip draws of the GLOBAL
batch (each rank slices its rows). Resuming from a checkpoint therefore reproduces the loss sequence of
an uninterrupted run exactly, and N ranks x B/N rows see the same samples and noise as 1 rank x B rows.

Checkpoints (rank 0): ``out/checkpoints/<step:07d>/`` with model.safetensors, ema.safetensors (svgfeat
DiT format, loadable by ``load_dit``), optimizer.safetensors + trainer.json (step, optimizer groups,
RNG states). ``out/log.jsonl`` has one line per ``log_every`` steps; ``out/ema.safetensors`` and
``out/latent_stats.pt`` (official layout) are written at the end.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed as D
from ..errors import CacheError, CheckpointError, ConfigError
from ..numerics import Numerics
from .data import BlockOrder, PrefetchReader
from .flow import flow_loss_from_noise, shift_t
from .stats import load_stats, save_stats

PRELOAD_LIMIT = 4 << 30  # bytes: caches smaller than this are loaded into (device) memory once


# ----------------------------------------------------------------------------------------------- data
class LatentBatcher:
    """Deterministic global batches of normalised tokens from a cache (protocol: ``__len__``,
    ``read(group, rows)``, ``labels``, ``latent_stats()``).

    ``batch(step, lo, hi)`` -> (tokens [hi-lo, h*w, C] float32, labels long [hi-lo]) for rows lo:hi of
    the global batch of ``step``; unlabelled rows (-1) get the null class.

    Caches of at most ``preload_limit`` bytes of latents are loaded onto the device once and every epoch is one
    random permutation. Larger caches stream (:mod:`svgfeat.generation.data`): epochs in block-shuffled order
    (blocks of ``block_rows`` shard-contiguous rows, rows shuffled within windows of ``window_blocks`` blocks) and
    ``prefetch`` upcoming batches read on ``workers`` background threads; memory stays bounded.
    """

    def __init__(self, cache, global_batch: int, seed: int, stats, null_class: int, device, hflip: bool = False,
                 preload_limit: int = PRELOAD_LIMIT, block_rows: int = 64, window_blocks: int = 32,
                 prefetch: int = 4, workers: int = 2, max_step: int | None = None):
        self.cache, self.B, self.seed, self.device, self.hflip = cache, global_batch, seed, device, hflip
        self.n = len(cache)
        if self.n == 0:
            raise CacheError("the cache holds no samples")
        first = np.asarray(cache.read("latent", np.array([0])))
        if first.ndim != 4:
            raise CacheError(f"cache group 'latent' must be [n,C,h,w], got rows of shape {first.shape[1:]}")
        self.C, self.h, self.w = first.shape[1:]
        labels = np.asarray(cache.labels, dtype=np.int64)
        if labels.shape != (self.n,):
            raise CacheError(f"cache labels have shape {labels.shape}, expected ({self.n},)")
        if labels.max(initial=-1) >= null_class:
            raise ConfigError(f"cache labels go up to {labels.max()}, the DiT has {null_class} classes; "
                              f"build it with num_classes > {labels.max()}")
        self.labels = torch.from_numpy(np.where(labels < 0, null_class, labels)).to(device)
        st = load_stats(stats if stats is not None else cache)
        if st["mean"].numel() < self.C:
            raise ConfigError(f"latent stats have {st['mean'].numel()} channels, the cache has {self.C}")
        self.mean = st["mean"][: self.C].to(device)
        self.std = st["std"][: self.C].to(device)
        self.data = self.order = self.reader = None
        if self.n * first.nbytes <= preload_limit:
            self.data = torch.from_numpy(np.ascontiguousarray(cache.read("latent", np.arange(self.n)))).to(device)
        else:
            offs = getattr(cache, "shard_offsets", None)
            offs = getattr(cache, "_offsets", None) if offs is None else offs
            self.order = BlockOrder(self.n, global_batch, seed, block_rows, window_blocks, offs)
            self.reader = PrefetchReader(cache, "latent", self.order.rows, prefetch, workers, max_step)
        self._stage = None
        if torch.device(device).type == "cuda":  # streamed batches: the shared pinned ring + stream
            from ..device_staging import DeviceStage

            self._stage = DeviceStage(device)
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).numpy(), epoch
        return self._perm

    def rows(self, step: int) -> np.ndarray:
        """Cache rows of the global batch of ``step`` (epochs wrap with a fresh permutation)."""
        if self.order is not None:
            return self.order.rows(step)
        k = np.arange(step * self.B, (step + 1) * self.B)
        ep, pos = k // self.n, k % self.n
        return np.array([self._perm_for(int(e))[int(p)] for e, p in zip(ep, pos)], dtype=np.int64)

    def batch(self, step: int, lo: int, hi: int, flip: torch.Tensor | None = None):
        rows = self.rows(step)[lo:hi]
        if self.data is not None:
            z = self.data[torch.from_numpy(rows).to(self.device)]
        else:
            z = torch.from_numpy(self.reader.get(step, lo, hi))
            z = self._stage.to_device(z, handoff=True) if self._stage is not None else z.to(self.device)
        z = z.float()
        if self.hflip and flip is not None:
            z = torch.where(flip.view(-1, 1, 1, 1), z.flip(-1), z)
        tok = (z.flatten(2).transpose(1, 2) - self.mean) / self.std
        return tok, self.labels[torch.from_numpy(rows).to(self.device)]

    def close(self) -> None:
        """Stop the background readers (streaming caches)."""
        if self.reader is not None:
            self.reader.close()
        if self._stage is not None:
            self._stage.close()


def step_noise(step: int, seed: int, B: int, N: int, C: int, shift: float, drop_p: float, device):
    """Randomness of one global step: t [B] (shifted), x0 [B,N,C], drop bool [B], flip bool [B]."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed((seed * 1_000_003 + step * 7_919 + 12_345) % (2 ** 63))
    t = shift_t(torch.rand(B, generator=g, device=dev), shift)
    x0 = torch.randn(B, N, C, generator=g, device=dev)
    drop = torch.rand(B, generator=g, device=dev) < drop_p
    flip = torch.rand(B, generator=g, device=dev) < 0.5
    return t, x0, drop, flip


# ----------------------------------------------------------------------------------------------- checkpoints
def _optim_to_tensors(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_from_tensors(opt, tensors: dict, meta: dict, device):
    state: dict = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v if k == "step" else v.to(device)
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(ckdir: Path, step: int, model, ema, opt, extra: dict) -> Path:
    """Write ``ckdir/<step>`` (every file fsync'd, the folder renamed into place when whole) and point
    ``latest.json`` at it; a failure (full disk) leaves the previous checkpoint as it was and no temp files."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path, write_bytes_atomic
    from ..models.dit import save_dit

    final = ckdir / f"{step:07d}"
    tmp = ckdir / f".{step:07d}.tmp"
    # rmtree only ever touches svgfeat's own names inside the run's checkpoints/ folder: the hidden temp folder
    # of this step and the step folder it replaces (a resumed run re-saving the same step)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_dit(model, tmp / "model.safetensors")
        save_dit(ema, tmp / "ema.safetensors")
        tensors, meta = _optim_to_tensors(opt)
        rng = {"rng.torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["rng.torch_cuda"] = torch.cuda.get_rng_state()
        with atomic_path(tmp / "optimizer.safetensors") as t:
            save_file({**tensors, **rng}, str(t))
        write_bytes_atomic(tmp / "trainer.json", json.dumps({"step": step, "optimizer": meta, **extra},
                                                            indent=1).encode())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_bytes_atomic(ckdir / "latest.json", json.dumps({"step": step, "dir": final.name}).encode())
    return final


RUN_FILES = ("latent_stats.pt", "train_config.json", "log.jsonl", "ema.safetensors", "ema.json",
             "checkpoints/latest.json")


def check_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse a run folder holding one of the files train-dit writes that svgfeat did not write."""
    from ..atomic import check_output

    for name in RUN_FILES:
        check_output(Path(out) / name, overwrite, "run folder file")


def load_checkpoint(ckdir: Path, model, ema, opt, device, numerics: Numerics | None = None) -> int:
    """Restore the newest checkpoint under ``ckdir`` into model/ema/opt; returns its step (0 if none). A
    checkpoint trained in another precision is refused (older checkpoints without a record were fp32 on CPU,
    bf16 on CUDA)."""

    from .. import checkpoints as ck
    from ..regular_files import read_text

    latest = ckdir / "latest.json"
    if not latest.is_file():
        return 0
    try:
        d = ckdir / json.loads(read_text(latest, "checkpoint pointer", error=CheckpointError))["dir"]
        meta = json.loads(read_text(d / "trainer.json", "trainer state", error=CheckpointError))
        ck.load_strict(model, ck.load_file(d / "model.safetensors"), "DiT (resume)", str(d))
        ck.load_strict(ema, ck.load_file(d / "ema.safetensors"), "DiT EMA (resume)", str(d))
        tensors = ck.load_file(d / "optimizer.safetensors")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot resume from {d}: {e}") from None
    if numerics is not None:
        was = meta.get("numerics", {}).get("precision") or ("bf16" if torch.device(device).type == "cuda" else "fp32")
        if was != numerics.precision:
            raise ConfigError(f"cannot resume from {d}: it was trained with precision {was}, requested "
                              f"{numerics.precision}; pass the same --precision, a new --out, or --no-resume")
    _optim_from_tensors(opt, {k: v for k, v in tensors.items() if k.startswith("state.")}, meta["optimizer"], device)
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    return int(meta["step"])


# ----------------------------------------------------------------------------------------------- loop
@torch.no_grad()
def ema_update(ema, model, decay: float):
    """ema = decay*ema + (1-decay)*model for every parameter and floating buffer."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        if be.dtype.is_floating_point:
            be.mul_(decay).add_(bm, alpha=1 - decay)


def train_dit(cache, model="svg_dit_xl", out_dir="runs/dit", steps: int = 1000, batch_size: int = 256,
              lr: float = 1e-4, weight_decay: float = 0.0, ema_decay: float = 0.9999, shift: float = 0.4,
              grad_clip: float | None = None, seed: int = 0, device="cpu", log_every: int = 50,
              ckpt_every: int = 5000, resume: bool = True, hflip: bool = False, stats=None,
              model_overrides: dict | None = None, progress: bool = True, data_options: dict | None = None,
              precision: str = "fp32", tf32: bool = False, overwrite: bool = False) -> dict:
    """Train a DiT on the ``latent`` group of a feature cache.

    cache: a cache path (``svgfeat.open_cache``) or an object with ``__len__``, ``read(group, rows)``,
        ``labels`` and ``latent_stats()``. model: a registered DiT name (built with the cache's channels
        and grid) or an SVGDiT. batch_size is the GLOBAL batch (split evenly over torchrun ranks).
    stats: None (the cache's ``latent_stats()``), a stats file or dict(mean, std).
    data_options: keyword arguments of :class:`LatentBatcher` (``preload_limit``, ``block_rows``,
        ``window_blocks``, ``prefetch``, ``workers``) — caches larger than ``preload_limit`` stream from disk.
    precision / tf32: the :class:`~svgfeat.numerics.Numerics` of the forward pass: fp32 by default (the official
        recipe: fp32, with TF32 matmuls on CUDA = ``tf32=True``); ``precision="bf16"`` autocasts. Recorded in
        ``train_config.json``, every checkpoint's ``trainer.json`` and the EMA file's config; a resume with other
        numerics is refused.
    overwrite: replace run-folder files (``RUN_FILES``) that svgfeat did not write (else refused up front).
    Returns {"step", "loss" (last logged), "out_dir", "ema"}.
    """
    from ..atomic import mark_written, write_bytes_atomic
    from ..models.dit import SVGDiT

    check_run_folder(Path(out_dir), overwrite)
    Numerics.for_device(device, precision, tf32=tf32)  # cuda without CUDA, bf16 where it cannot run: one error
    info, dev = D.setup(device)
    numerics = Numerics.for_device(dev, precision, tf32=tf32)
    rank, world = info.rank, info.world
    if batch_size % world:
        raise ConfigError(f"global batch {batch_size} is not divisible by {world} ranks")
    if steps < 0 or batch_size < 1 or log_every < 1 or ckpt_every < 1:
        raise ConfigError(f"steps >= 0, batch_size/log_every/ckpt_every >= 1 expected; got steps={steps}, "
                          f"batch_size={batch_size}, log_every={log_every}, ckpt_every={ckpt_every}")
    if isinstance(cache, (str, Path)):
        from ..cache import open_cache

        cache = open_cache(cache)
    out = Path(out_dir)
    if isinstance(model, str):
        from ..models.build import create_model

        first = np.asarray(cache.read("latent", np.array([0])))
        C, h, w = first.shape[1:]
        ov = {"in_channels": int(C), **({"input_size": int(h)} if h == w else {}), **(model_overrides or {})}
        from .memory_estimate import check_train_memory

        check_train_memory(model, ov, batch_size // world, dev)  # refused up front with the estimate, not OOM-killed
        torch.manual_seed(seed)
        model = create_model(model, **ov)
    if not isinstance(model, SVGDiT):
        raise ConfigError(f"model must be a registered DiT name or an SVGDiT, got {type(model).__name__}")
    model = model.to(dev).train()
    data = LatentBatcher(cache, batch_size, seed, stats, model.num_classes, dev, hflip,
                         **{"max_step": steps, **(data_options or {})})
    if data.C != model.in_channels:
        raise ConfigError(f"the DiT takes {model.in_channels} channels, the cache latents have {data.C}")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    ckdir = out / "checkpoints"
    start = load_checkpoint(ckdir, model, ema, opt, dev, numerics) if resume else 0
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    log_path = out / "log.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_stats(out / "latent_stats.pt", data.mean.cpu(), data.std.cpu())
        write_bytes_atomic(out / "train_config.json", json.dumps(dict(
            steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, ema_decay=ema_decay, shift=shift,
            grad_clip=grad_clip, seed=seed, hflip=hflip, world_size=world, model=model.config.to_dict(),
            numerics=numerics.record()), indent=1).encode())
        if log_path.exists():  # drop lines logged after the checkpoint we resume from
            keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
            write_bytes_atomic(log_path, "".join(ln + "\n" for ln in keep).encode())
    lo, hi = rank * batch_size // world, (rank + 1) * batch_size // world
    N = data.h * data.w
    bar = None
    if progress and rank == 0 and start < steps:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="train-dit", dynamic_ncols=True)
    acc, acc_n, last, t0 = torch.zeros((), device=dev), 0, None, time.time()
    for step in range(start, steps):
        t, x0, drop, flip = step_noise(step, seed, batch_size, N, data.C, shift, model.y_embedder.dropout_prob, dev)
        x1, y = data.batch(step, lo, hi, flip[lo:hi])
        with numerics.autocast():
            loss = flow_loss_from_noise(ddp, x1, y, t[lo:hi], x0[lo:hi], drop[lo:hi], grid=(data.h, data.w))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        ema_update(ema, model, ema_decay)
        acc += loss.detach()
        acc_n += 1
        done = step + 1
        if done % log_every == 0 or done == steps:
            D.all_reduce_mean(acc, info)
            last = acc.item() / acc_n
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": done, "loss": last, "lr": lr, "time": round(time.time() - t0, 3)}) + "\n")
                mark_written(log_path)
                if bar is not None:
                    bar.set_postfix(loss=f"{last:.4f}")
            acc, acc_n = torch.zeros((), device=dev), 0
        if bar is not None:
            bar.update(1)
        if done % ckpt_every == 0 or done == steps:
            if rank == 0:
                save_checkpoint(ckdir, done, model, ema, opt, {"seed": seed, "world_size": world,
                                                               "numerics": numerics.record()})
            D.barrier(info)
    if bar is not None:
        bar.close()
    data.close()
    ema_path = out / "ema.safetensors"
    if rank == 0:
        from ..models.dit import save_dit

        save_dit(ema, ema_path, numerics=numerics.record())
    D.barrier(info)
    D.teardown(info)
    return {"step": max(start, steps), "loss": last, "out_dir": str(out), "ema": str(ema_path),
            "model": model, "ema_model": ema}
