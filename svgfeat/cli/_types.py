"""Validated click option types shared by the commands.

Each type turns a bad value into ``click.BadParameter``, which :func:`svgfeat.cli.main` prints as ONE line
``Error: Invalid value for '--opt': <value received>: <what is expected>`` with exit status 2.
"""

from __future__ import annotations

import click

PATCH = 16  # every registered DINOv3 backbone uses 16-pixel patches


class MultipleOf(click.ParamType):
    """An integer >= ``minimum`` that is a multiple of ``step`` (image sizes, crops: whole patches)."""

    name = "integer"

    def __init__(self, step: int = PATCH, minimum: int = PATCH, what: str = "an image side in pixels",
                 maximum: int | None = None):
        self.step, self.minimum, self.what, self.maximum = step, minimum, what, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            v = value
        else:
            try:
                v = int(str(value).strip())
            except ValueError:
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


class Count(click.ParamType):
    """An integer >= ``minimum`` and <= ``maximum`` (workers >= 0, batch sizes >= 1, limits >= 1)."""

    name = "integer"

    def __init__(self, minimum: int = 1, what: str = "a count", maximum: int | None = None):
        self.minimum, self.what, self.maximum = minimum, what, maximum

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            v = value
        else:
            try:
                v = int(str(value).strip())
            except ValueError:
                v = None
        if v is None or v < self.minimum or (self.maximum is not None and v > self.maximum):
            top = f" and <= {self.maximum:,}" if self.maximum is not None else ""
            self.fail(f"{str(value)[:40]!r}: expected {self.what}, an integer >= {self.minimum}{top}", param, ctx)
        return v


class Real(click.ParamType):
    """A finite float in ``[lo, hi]`` (``lo_open`` / ``hi_open`` exclude the ends): learning rates, weight decays,
    temperatures, guidance scales. ``nan``, ``inf`` and out-of-range values are one-line errors."""

    name = "float"

    def __init__(self, lo: float | None = None, hi: float | None = None, what: str = "a number", *,
                 lo_open: bool = False, hi_open: bool = False):
        self.lo, self.hi, self.what, self.lo_open, self.hi_open = lo, hi, what, lo_open, hi_open

    def _range(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "finite"

    def convert(self, value, param, ctx):
        import math

        try:
            v = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            v = None
        bad = (v is None or not math.isfinite(v)
               or (self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)))
               or (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi))))
        if bad:
            self.fail(f"{str(value)[:40]!r}: expected {self.what}, a finite number {self._range()}", param, ctx)
        return v


class NumberList(click.ParamType):
    """A comma-separated list of finite numbers in a range (``-k 10,20``, ``--lrs 1e-3,0.1``, ``--wd 0,1e-4``).
    Returns the text as given, validated: the commands parse it themselves."""

    name = "list"

    def __init__(self, item: click.ParamType):
        self.item = item

    def convert(self, value, param, ctx):
        text = str(value)
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            self.fail(f"{text[:40]!r}: expected a comma-separated list of numbers", param, ctx)
        for p in parts:
            try:
                self.item.convert(p, param, ctx)
            except click.BadParameter as e:
                self.fail(f"{text[:40]!r}: item {e.message}", param, ctx)
        return text


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
WORKERS = Count(0, "a number of worker processes", 1024)
POSITIVE = Count(1, "a positive integer")
LIMIT = Count(1, "a number of items")
UNIT_OPEN = Real(0, 1, "a fraction", lo_open=True)  # (0, 1]: recall targets, fractions
PROBABILITY = Real(0, 1, "a probability", hi_open=True)  # [0, 1): dropout, masking
DECAY = Real(0, 1, "a decay in [0, 1]")
LR = Real(0, 10, "a learning rate", lo_open=True)
WEIGHT_DECAY = Real(0, 10, "a weight decay")
LOSS_WEIGHT = Real(0, 1e4, "a loss weight")
GRAD_CLIP = Real(0, 1e6, "a gradient-norm clip")
TEMPERATURE = Real(0, 100, "a temperature", lo_open=True)
SHIFT = Real(0, 100, "a time shift", lo_open=True)
GUIDANCE = Real(0, 100, "a guidance scale")
SECONDS = Real(0, 7 * 86400, "seconds", lo_open=True)
K_NEIGHBOURS = Count(1, "a number of neighbours", 100_000)
K_LIST = NumberList(K_NEIGHBOURS)
LR_LIST = NumberList(LR)
WD_LIST = NumberList(WEIGHT_DECAY)
STEPS = Count(1, "a number of steps", 100_000_000)
SEED = Count(0, "a seed", 2**32 - 1)
