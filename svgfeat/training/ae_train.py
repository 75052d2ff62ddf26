"""Train an SVG autoencoder (residual encoder + pixel decoder on a frozen DINOv3), one process or ``torchrun``.

Recipe (SVG_REFERENCE.md §1.5-1.6): L1 + LPIPS + PatchGAN hinge loss with the adaptive weight, two Adam
optimizers (betas (0.5, 0.9), lr 1e-4, no schedule), AE update then discriminator update every iteration,
residual masking (p = mask_ratio), taming crops (short side -> size, random crop), pixels in [-1, 1].
``disc_start`` counts iterations; the official 5001 counted Lightning's global_step, which advances by 2
per iteration with two optimizers under manual optimisation, hence the default 2501.

Determinism: data order, crops, mask draws and RoPE-rescale draws are functions of (seed, step); dropout
uses the torch RNG, whose state is saved per rank. Resuming reproduces the loss sequence of an
uninterrupted run, and W ranks with B/W images each reproduce one process with B images (up to float
round-off) when ``batch_stats="global"`` (alignment statistics, discriminator BatchNorm and the adaptive
weight's gradient norms computed over the global batch) and the residual dropout is 0. The official DDP
run used per-GPU statistics for all three (``batch_stats="local"``), so its encoding of a training batch
depended on the per-GPU split.

Outputs in ``out``: ``checkpoints/step_XXXXXXX/`` (see :mod:`.ae_state`), ``log.jsonl`` (metrics),
``samples/step_XXXXXXX.png`` (originals | reconstructions), ``encoder.safetensors`` (+ JSON; final weights
with fixed-alignment statistics of the training data in its config) and, with ``export_official``,
``official/svg_autoencoder.ckpt`` + ``.yaml``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import distributed as D
from ..atomic import mark_written, write_bytes_atomic
from ..errors import CheckpointError, ConfigError
from ..models.align import AlignmentStats
from ..numerics import Numerics
from ..outputs import check_outputs
from .ae_data import (
    AECropDataset,
    StreamBatchSampler,
    _mix,
    fixed_images,
    make_loader,
    step_generator,
    to_model_inputs,
)
from .ae_model import (
    BATCH_STATS,
    autoencoder_config,
    build_autoencoder,
    mask_keep,
    read_backbone_weights,
    trainable_parameters,
    training_latent,
)
from .ae_state import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from .discriminator import build_discriminator
from .losses import REDUCTIONS, AELoss
from .recon_metrics import psnr, quantize01, save_sheet
from .rope_aug import install_rope_rescale, rope_rescale_active

LPIPS_MODES = ("auto", "pretrained", "random", "none")
AE_PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 elsewhere
# trainer settings that must match when resuming (others, e.g. steps or log_every, may change; the precision is
# compared through the numerics record)
RESUME_KEYS = ("size", "batch_size", "seed", "mask_ratio", "rope_rescale", "batch_stats", "disc_ndf", "disc_layers")


@dataclass
class AETrainConfig:
    """Hyper-parameters of :func:`train_ae` (defaults: the official recipe)."""

    size: int = 256
    steps: int = 100_000
    batch_size: int = 64            # global batch (split over ranks)
    lr: float = 1e-4
    disc_lr: float | None = None    # None: same as lr
    betas: tuple = (0.5, 0.9)
    disc_start: int = 2501
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    perceptual_weight: float = 1.0
    reduction: str = "sum"
    disc_ndf: int = 64
    disc_layers: int = 3
    mask_ratio: float | None = None       # None: the model's (0.1)
    residual_dropout: float | None = None  # None: the model's (0.1)
    rope_rescale: float | None = None     # 2.0 reproduces the official train-mode DINOv3 (see rope_aug)
    batch_stats: str = "global"
    lpips: str = "auto"                   # auto: pretrained when its weights are found, else no perceptual term
    lpips_width_div: int = 1
    vgg_weights: str | None = None
    lpips_weights: str | None = None
    precision: str = "auto"               # auto: bf16 autocast on CUDA, fp32 elsewhere | bf16 | fp32
    seed: int = 23
    workers: int = 4
    log_every: int = 50
    ckpt_every: int = 2000
    keep_checkpoints: int = 2             # 0 keeps all
    sample_every: int = 1000
    num_samples: int = 8
    stats_images: int = 10_000
    stats_batch_size: int = 64
    export_official: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.size <= 0 or self.size % 16:
            raise ConfigError(f"size must be a positive multiple of 16, got {self.size}")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "sample_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_stats not in BATCH_STATS:
            raise ConfigError(f"batch_stats={self.batch_stats!r}: expected one of {BATCH_STATS}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction={self.reduction!r}: expected one of {REDUCTIONS}")
        if self.lpips not in LPIPS_MODES:
            raise ConfigError(f"lpips={self.lpips!r}: expected one of {LPIPS_MODES}")
        if self.precision not in AE_PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: expected auto, bf16 or fp32")
        if self.lpips == "none" and self.perceptual_weight > 0:
            raise ConfigError("lpips='none' needs perceptual_weight=0")

    def to_json(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


# ----------------------------------------------------------------------------------------------- helpers
def resolve_precision(precision: str, device_type: str) -> str:
    """``precision`` (auto | fp32 | bf16) -> the Numerics precision: auto = bf16 on CUDA, fp32 elsewhere."""
    return ("bf16" if device_type == "cuda" else "fp32") if precision == "auto" else precision


def ae_numerics(device, precision: str) -> Numerics:
    """The run's :class:`Numerics` from ``precision`` (auto: bf16 autocast on CUDA as documented, fp32 elsewhere;
    bf16: autocast wherever :meth:`Numerics.for_device` allows it); recorded in the checkpoint config and
    summary.json. Refused on a device without float64 (the batch statistics are float64 sums)."""
    device = torch.device(device)
    num = Numerics.for_device(device, resolve_precision(precision, device.type))
    num.require_float64("autoencoder training (float64 batch statistics)")
    return num


def saved_precision(saved: dict, device_type: str) -> str:
    """The precision a checkpoint was trained in: its numerics record, else (older checkpoints) its trainer's
    ``amp`` setting resolved on this device type."""
    rec = (saved.get("numerics") or {}).get("precision")
    if rec:
        return rec
    t = saved.get("trainer", {})
    return resolve_precision(t.get("precision", t.get("amp", "auto")), device_type)


@torch.no_grad()
def compute_fixed_stats(enc, data: AECropDataset, info: D.DistInfo, device, n_images: int, batch_size: int,
                        seed: int) -> dict:
    """Fixed alignment statistics over (up to) ``n_images`` centre-cropped training images (seeded subset,
    split over ranks, sums all-reduced): {mu_dino, sigma_dino, mu_res, sigma_res}."""
    n = len(data)
    idx = np.arange(n) if n_images >= n else np.sort(np.random.default_rng(_mix(seed, 99)).permutation(n)[:n_images])
    mine = idx[info.rank::info.world]
    acc = AlignmentStats()
    was = enc.training
    enc.eval()
    try:
        for i in range(0, max(len(mine), 1), batch_size):
            chunk = mine[i:i + batch_size]
            if len(chunk) == 0:
                break
            _, xn = to_model_inputs(torch.stack([data[(int(j), None)] for j in chunk]), device)
            acc.update(enc.backbone(xn).patch, enc.raw_residual(xn))
    finally:
        enc.train(was)
    for m, c in ((acc.dino, enc.embed_dim), (acc.res, enc.residual_channels)):
        if m.s is None:  # this rank had no images
            m.load_tensor(torch.zeros(2 * c + 1, dtype=torch.float64, device=device))
    acc.reduce(lambda t: D.all_reduce_sum(t.to(device), info))
    return {**acc.compute(), "images": int(len(idx))}


@torch.no_grad()
def sample_grid(enc, images_u8: torch.Tensor, path, device) -> dict:
    """Reconstruct fixed images (eval mode) and save originals | reconstructions; returns metrics."""
    x, xn = to_model_inputs(images_u8, device)
    x_rec = enc.decode(enc.encode(xn).latent).float()
    a, b = quantize01(x), quantize01(x_rec)
    save_sheet((a.cpu(), b.cpu()), path)
    return {"val_psnr": float(psnr(a, b).mean()), "val_l1": float((x - x_rec.clamp(-1, 1)).abs().mean())}


def _truncate_log(path: Path, start_step: int) -> None:
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", -1) < start_step]
    write_bytes_atomic(path, "".join(ln + "\n" for ln in keep).encode())


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    mark_written(path)  # ours: a resume may append to it again


def planned_outputs(out, cfg: "AETrainConfig") -> list[Path]:
    """The files a run writes into ``out`` by name (the step folders under checkpoints/ are svgfeat's own)."""
    import os
    import re

    out = Path(out)
    files = ["log.jsonl", "summary.json", "encoder.safetensors", "encoder.json"]
    try:  # the sample sheets this run would write that already exist (a scan: bounded by the folder, not by steps)
        names = [e.name for e in os.scandir(out / "samples")]
    except OSError:
        names = []
    for name in names:
        m = re.fullmatch(r"step_(\d{7})\.png", name)
        if m and 0 < int(m[1]) <= cfg.steps and (int(m[1]) % cfg.sample_every == 0 or int(m[1]) == cfg.steps):
            files.append(f"samples/{name}")
    if cfg.export_official:
        files += ["official/svg_autoencoder.ckpt", "official/svg_autoencoder.yaml"]
    return [out / f for f in files]


# ----------------------------------------------------------------------------------------------- trainer
def train_ae(data, out, model: str | None = None, backbone: str | None = None, dinov3=None, device="cpu",
             resume: bool = True, progress: bool = True, config: AETrainConfig | None = None, overwrite: bool = False,
             **overrides) -> dict:
    """Train an SVG autoencoder on ``data`` (any :func:`svgfeat.open_dataset` spec or Dataset).

    ``model`` (e.g. ``"test_tiny"``) or ``backbone`` (``vit_small_plus`` default, ``vit_base``, ``vit_large``,
    ...) chooses the architecture; ``dinov3`` the frozen backbone weights (random only for test_* models).
    ``config``/``overrides``: :class:`AETrainConfig` fields. Returns a summary dict: out, steps, start_step,
    first/last log records, checkpoint, fixed_stats, latent_channels, encoder (path, rank 0), official
    (paths, with export_official) and encoder_object (the trained :class:`SVGEncoder`, eval mode).
    The files it writes into ``out`` (:func:`planned_outputs`) are checked before any work: one svgfeat did
    not write is refused unless ``overwrite``.
    """
    from ..data import open_dataset
    from ..models.loading import export_official, save_encoder
    from .lpips import build_lpips

    cfg = config or AETrainConfig()
    if "amp" in overrides:  # the old name of ``precision``
        import warnings

        warnings.warn("train_ae(amp=...) is deprecated; use precision=...", DeprecationWarning, stacklevel=2)
        amp = overrides.pop("amp")
        if overrides.setdefault("precision", amp) != amp:
            raise ConfigError(f"amp={amp!r} (deprecated) and precision={overrides['precision']!r} disagree; "
                              "pass precision only")
    bad = set(overrides) - set(AETrainConfig.__dataclass_fields__)
    if bad:
        raise ConfigError(f"unknown AE training option(s) {sorted(bad)}; "
                          f"expected fields of AETrainConfig: {sorted(AETrainConfig.__dataclass_fields__)}")
    cfg = AETrainConfig(**{**asdict(cfg), **overrides})
    cfg.validate()
    check_outputs(planned_outputs(out, cfg), overwrite)
    ae_numerics(device, cfg.precision)  # a device that is not here (cuda without CUDA) is one error, before setup
    info, dev = D.setup(device)
    try:
        if cfg.batch_size % info.world:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {info.world} ranks")
        numerics = ae_numerics(dev, cfg.precision)
        autocast = numerics.autocast
        dataset = open_dataset(data)
        crops = AECropDataset(dataset, cfg.size)
        weights = read_backbone_weights(dinov3) if dinov3 is not None else None
        dino_over = None
        if weights is not None and backbone is None and model is None:
            backbone, dino_over = weights[2], weights[3]  # sized from the weights (variant + any custom shape)
        enc_cfg = autoencoder_config(backbone, cfg.size, model, cfg.mask_ratio, cfg.residual_dropout, dino_over)
        enc, prov = build_autoencoder(enc_cfg, weights, dev, cfg.seed)
        random_dino = dinov3 is None
        rope = install_rope_rescale(enc.backbone, cfg.rope_rescale) if cfg.rope_rescale else None
        lp, perceptual_weight, lpips_used = None, cfg.perceptual_weight, cfg.lpips
        if cfg.lpips != "none":
            try:
                lp = build_lpips(cfg.vgg_weights, cfg.lpips_weights, pretrained=cfg.lpips != "random",
                                 width_div=cfg.lpips_width_div, device=dev, seed=cfg.seed)
                lpips_used = "random" if cfg.lpips == "random" else "pretrained"
            except CheckpointError as e:
                if cfg.lpips != "auto":
                    raise
                perceptual_weight, lpips_used = 0.0, "none (weights not found)"
                if info.is_main:
                    print(f"warning: training WITHOUT the LPIPS perceptual loss (L1 + GAN only): {e}. Pass "
                          "--lpips-weights/--vgg-weights (or --lpips pretrained to require them).", file=sys.stderr)
        disc = build_discriminator(cfg.disc_ndf, cfg.disc_layers, sync_bn=cfg.batch_stats == "global",
                                   seed=cfg.seed + 1, device=dev)
        loss = AELoss(lp, disc, cfg.disc_start, cfg.disc_weight, cfg.disc_factor, perceptual_weight,
                      cfg.reduction)
        ae_params = trainable_parameters(enc)
        opt_ae = torch.optim.Adam(ae_params, lr=cfg.lr, betas=tuple(cfg.betas))
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=tuple(cfg.betas))
        D.broadcast_module(enc, info)
        D.broadcast_module(disc, info)

        out = Path(out)
        ck_root = out / "checkpoints"
        log_path = out / "log.jsonl"
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        D.barrier(info)
        trainer_meta = {"trainer": cfg.to_json(), "lpips_used": lpips_used, "encoder": enc_cfg, "data": str(data),
                        "data_len": len(dataset), "dinov3": prov.get("dinov3"), "world_size": info.world,
                        "numerics": numerics.record()}
        start = 0
        last = latest_checkpoint(ck_root) if resume else None
        if last is not None:
            saved = read_meta(last)["config"]
            diffs = [k for k in RESUME_KEYS if saved["trainer"].get(k) != cfg.to_json().get(k)]
            if saved["encoder"] != json.loads(json.dumps(enc_cfg)):
                diffs.append("encoder config")
            if saved.get("data_len") != len(dataset):
                diffs.append(f"dataset size ({saved.get('data_len')} vs {len(dataset)})")
            if diffs:
                raise ConfigError(f"cannot resume from {last}: different {', '.join(diffs)}; use a new --out "
                                  "or --no-resume")
            was = saved_precision(saved, dev.type)
            if was != numerics.precision:
                raise ConfigError(f"cannot resume from {last}: it was trained with precision {was}, requested "
                                  f"{numerics.precision}; pass the same --precision, a new --out, or --no-resume")
            start = load_checkpoint(last, enc, disc, opt_ae, opt_d, info, dev)
        if info.is_main:
            _truncate_log(log_path, start)
        D.barrier(info)
        if info.is_main and numerics.precision != "fp32":  # never switched on silently (auto: bf16 on CUDA)
            print(f"train-ae: {numerics.precision} autocast on {numerics.device_type} (--precision {cfg.precision}; "
                  "recorded in the checkpoints and summary.json; --precision fp32 turns it off)", file=sys.stderr)

        sampler = StreamBatchSampler(len(crops), cfg.batch_size, cfg.seed, info.rank, info.world, start,
                                     max(cfg.steps - start, 0))
        lo, hi = sampler.rank_slice()
        loader = make_loader(crops, sampler, cfg.workers, pin_memory=dev.type == "cuda")
        grad_reduce = (lambda t: D.all_reduce_mean(t.clone(), info)) if (
            cfg.batch_stats == "global" and info.distributed) else None
        mask_ratio = enc.mask_ratio
        fixed = fixed_images(crops, cfg.num_samples) if info.is_main else None
        pbar = None
        if progress and info.is_main:
            from tqdm import tqdm

            pbar = tqdm(total=cfg.steps, initial=start, desc="train-ae", unit="step", dynamic_ncols=True)

        def save(step):
            p = save_checkpoint(ck_root, step, enc, disc, opt_ae, opt_d, trainer_meta, info, random_dino)
            if info.is_main and cfg.keep_checkpoints > 0:
                old = sorted(d for d in ck_root.glob("step_*") if d.is_dir())[:-cfg.keep_checkpoints]
                for d in old:
                    shutil.rmtree(d, ignore_errors=True)
            return p

        first = last_logs = None
        t0, n_timed, window, counts = time.perf_counter(), 0, {}, {}
        step = start
        for u8 in loader:
            enc.train()
            disc.train()
            x, xn = to_model_inputs(u8, dev)
            g = step_generator(cfg.seed, step)
            keep = mask_keep(g, cfg.batch_size, mask_ratio)
            with rope_rescale_active(rope, g), autocast():
                z = training_latent(enc, xn, None if keep is None else keep[lo:hi], info, cfg.batch_stats)
                x_rec = enc.decoder(z)
                loss_g, logs = loss.generator_loss(x, x_rec, enc.decoder.conv_out.weight, step, grad_reduce)
            opt_ae.zero_grad(set_to_none=True)
            loss_g.backward()
            D.average_gradients(ae_params, info)
            opt_ae.step()
            with autocast():
                d_loss, d_logs = loss.discriminator_loss(x, x_rec.detach(), step)
            if d_loss is not None:
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                D.average_gradients(disc.parameters(), info)
                opt_d.step()
            logs.update(d_logs)
            logs["psnr"] = psnr(quantize01(x), quantize01(x_rec.detach())).mean()
            for k, v in logs.items():  # window sums (keys appear once the discriminator starts)
                window[k] = window.get(k, 0.0) + torch.as_tensor(v).detach().float().to(dev)
                counts[k] = counts.get(k, 0) + 1
            n_timed += 1
            step += 1
            if pbar is not None:
                pbar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                keys = sorted(window)
                vals = torch.stack([window[k] / counts[k] for k in keys])
                vals = D.all_reduce_mean(vals, info)
                rec = {"step": step - 1, **{k: float(v) for k, v in zip(keys, vals.cpu())},
                       "window": n_timed, "sec_per_step": (time.perf_counter() - t0) / n_timed}
                t0, n_timed, window, counts = time.perf_counter(), 0, {}, {}
                first = first or rec
                last_logs = rec
                if info.is_main:
                    _append_log(log_path, rec)
                    if pbar is not None:
                        pbar.set_postfix(l1=f"{rec['l1']:.4f}", psnr=f"{rec['psnr']:.2f}")
            if info.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                m = sample_grid(enc, fixed, out / "samples" / f"step_{step:07d}.png", dev)
                _append_log(log_path, {"step": step - 1, **m})
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                save(step)
        if pbar is not None:
            pbar.close()
        final_ck = save(cfg.steps) if start < cfg.steps or last is None else last

        stats = compute_fixed_stats(enc, crops, info, dev, cfg.stats_images, cfg.stats_batch_size, cfg.seed)
        enc.align.set_fixed_stats(stats)
        summary = {"out": str(out), "steps": cfg.steps, "start_step": start, "first": first, "last": last_logs,
                   "lpips": lpips_used, "dinov3": prov.get("dinov3"),
                   "checkpoint": str(final_ck), "fixed_stats": stats, "latent_channels": enc.latent_channels,
                   "numerics": numerics.record()}
        if info.is_main:
            summary["encoder"] = str(save_encoder(enc, out / "encoder.safetensors", include_backbone=random_dino))
            if cfg.export_official:
                summary["official"] = [str(p) for p in export_official(enc, out / "official" / "svg_autoencoder.ckpt")]
            write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str).encode())
        D.barrier(info)
        summary["encoder_object"] = enc.eval()
        return summary
    finally:
        D.teardown(info)
