"""Validated numeric click option types: counts, finite reals in ranges, comma-separated lists of them.

Each type turns a bad value into ``click.BadParameter`` (one line, exit status 2; see :mod:`._types`).
"""

from __future__ import annotations

import click


def parse_int(value) -> int | None:
    """``value`` as an int (an int, or text holding one), else None; ``True``/``False`` are not integers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


class Count(click.ParamType):
    """An integer >= ``minimum`` and <= ``maximum`` (workers >= 0, batch sizes >= 1, limits >= 1)."""

    name = "integer"

    def __init__(self, minimum: int = 1, what: str = "a count", maximum: int | None = None):
        self.minimum, self.what, self.maximum = minimum, what, maximum

    def convert(self, value, param, ctx):
        v = parse_int(value)
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
