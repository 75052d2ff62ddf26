"""Memory budget for whole-array results: refuse up front, with a suggestion, instead of swapping or OOM.

The budget is, in order: an explicit ``budget`` argument (bytes), the ``SVGFEAT_MEMORY_BUDGET``
environment variable (bytes, or with a K/M/G/T suffix), else the memory the kernel reports available.
"""

from __future__ import annotations

import os

from ..errors import CacheError, ConfigError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    try:
        v = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise ConfigError(f"memory size {text!r}: expected bytes or a number with K/M/G/T") from None
    if v <= 0:
        raise ConfigError(f"memory size {text!r}: expected a positive size")
    return int(v)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_budget(budget=None) -> int | None:
    if budget is not None:
        return parse_bytes(budget) if isinstance(budget, str) else int(budget)
    env = os.environ.get("SVGFEAT_MEMORY_BUDGET")
    return parse_bytes(env) if env else available_bytes()


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def check_budget(nbytes: int, what: str, budget=None, hint: str = "") -> None:
    """CacheError when ``nbytes`` for ``what`` exceeds the budget (see module doc)."""
    limit = memory_budget(budget)
    if limit is not None and nbytes > limit:
        raise CacheError(f"{what} needs {gb(nbytes)}, more than the memory budget of {gb(limit)}"
                         f"{'; ' + hint if hint else ''} (budget: memory_budget=... or SVGFEAT_MEMORY_BUDGET)")
