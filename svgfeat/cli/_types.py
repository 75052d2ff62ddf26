"""Validated click option types shared by the commands.

Each type turns a bad value into ``click.BadParameter``, which :func:`svgfeat.cli.main` prints as ONE line
``Error: Invalid value for '--opt': <value received>: <what is expected>`` with exit status 2.
"""

from __future__ import annotations

import click

from ._numbers import (  # noqa: F401  (the numeric types live there; commands import every type from here)
    DECAY,
    GRAD_CLIP,
    GUIDANCE,
    K_LIST,
    K_NEIGHBOURS,
    LIMIT,
    LOSS_WEIGHT,
    LR,
    LR_LIST,
    POSITIVE,
    PROBABILITY,
    SECONDS,
    SEED,
    SHIFT,
    STEPS,
    TEMPERATURE,
    UNIT_OPEN,
    WD_LIST,
    WEIGHT_DECAY,
    WORKERS,
    Count,
    NumberList,
    Real,
    parse_int,
)

PATCH = 16  # every registered DINOv3 backbone uses 16-pixel patches


class MultipleOf(click.ParamType):
    """An integer >= ``minimum`` that is a multiple of ``step`` (image sizes, crops: whole patches)."""

    name = "integer"

    def __init__(self, step: int = PATCH, minimum: int = PATCH, what: str = "an image side in pixels",
                 maximum: int | None = None):
        self.step, self.minimum, self.what, self.maximum = step, minimum, what, maximum

    def convert(self, value, param, ctx):
        v = parse_int(value)
        if v is None:
            self.fail(f"{value!r}: expected {self.what}, a positive multiple of {self.step}", param, ctx)
        if v < self.minimum or v % self.step:
            self.fail(f"{str(value)!r}: expected {self.what}, a multiple of {self.step} that is >= {self.minimum} "
                      f"(e.g. {max(self.minimum, (max(v, 1) + self.step - 1) // self.step * self.step)})",
                      param, ctx)
        if self.maximum is not None and v > self.maximum:
            tokens = (v // PATCH) ** 2
            attn = tokens * tokens * 4 / 2**30  # one fp32 attention map per head and image
            self.fail(f"{str(value)!r}: expected {self.what} <= {self.maximum}: {v} px is {tokens:,} patches per image "
                      f"(one attention map alone ~{attn:,.0f} GiB per head)", param, ctx)
        return v


class NonEmptyText(click.ParamType):
    """A non-blank string argument (a dataset spec or folder: ``''`` would otherwise mean the current folder)."""

    name = "text"

    def convert(self, value, param, ctx):
        if not str(value).strip():
            self.fail(f"{value!r}: expected a path or spec, got an empty string", param, ctx)
        return value


class NonEmptyPath(click.Path):
    """``click.Path`` that refuses an empty or blank string (``''`` would otherwise mean the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail(f"{value!r}: expected a path, got an empty string", param, ctx)
        return super().convert(value, param, ctx)


class Device(click.ParamType):
    """A torch device string that exists on this machine: cpu, cuda[:N] (when CUDA is available) or mps."""

    name = "device"

    def convert(self, value, param, ctx):
        import torch

        text = str(value).strip()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            self.fail(f"{text!r}: expected a torch device such as cpu, cuda, cuda:0 or mps", param, ctx)
        if dev.type == "cpu":
            return text
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                self.fail(f"{text!r}: no CUDA device is available on this machine (torch {torch.__version__}, "
                          "cuda=no); use --device cpu", param, ctx)
            n = torch.cuda.device_count()
            if dev.index is not None and dev.index >= n:
                self.fail(f"{text!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})", param, ctx)
            return text
        if dev.type == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                self.fail(f"{text!r}: the Apple MPS backend is not available on this machine; use --device cpu",
                          param, ctx)
            return text
        self.fail(f"{text!r}: expected cpu, cuda, cuda:<N> or mps", param, ctx)


class ModelName(click.ParamType):
    """A registered model name (``kind``: 'encoder' or 'dit')."""

    name = "model"

    def __init__(self, kind: str | None = "encoder"):
        self.kind = kind

    def convert(self, value, param, ctx):
        from ..models.build import list_models

        names = list_models(kind=self.kind)
        if value in names:
            return value
        what = {"encoder": "a registered encoder", "dit": "a registered DiT"}.get(self.kind, "a registered model")
        self.fail(f"{value!r}: expected {what}: {', '.join(names)} (see `svgfeat doctor`)", param, ctx)


MAX_SIDE = 4096  # 65,536 patches per image: beyond, one attention map per head needs more than 16 GiB
SIZE = MultipleOf(PATCH, PATCH, "an image side in pixels", MAX_SIDE)
CROP = MultipleOf(PATCH, PATCH, "a crop side in pixels", MAX_SIDE)
DEVICE = Device()
ENCODER = ModelName("encoder")
DIT = ModelName("dit")
