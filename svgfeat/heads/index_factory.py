"""Choosing a faiss ``index_factory`` string from the data size and a memory budget (``factory="auto"``).

The rules follow what autofaiss does, simplified:

- ``n <= flat_max`` (50k vectors) and the exact index fits: ``Flat`` (exact, recall 1.0).
- otherwise an inverted file with ``nlist ≈ 4·sqrt(n)`` lists: ``IVF{nlist},Flat`` when raw vectors fit,
  else ``IVF{nlist},SQ8`` (1 byte per dimension), else ``IVF{nlist},PQ{m}`` with the largest ``m`` (bytes per
  vector, dividing ``d``) that fits. Its ``nprobe`` is then tuned on held-out queries to a recall target
  (:mod:`svgfeat.heads.index_tuning`): ``nprobe`` reaches any recall up to exhaustive search, and the build costs
  one k-means on a sample plus one pass over the data. HNSW (no training, but a graph build measured at 739 s for
  400k x 384 on 2 cores, and recall@10 0.12 at efSearch 64 on weakly clustered data) is never picked
  automatically; give ``HNSW32`` explicitly to get it, its ``efSearch`` tuned the same way.

Memory estimates are per stored vector (float32 raw = ``4·d`` bytes; HNSW32 adds ~``2·32·4·1.1`` bytes of links;
IVF adds 8 bytes of id; PQ stores ``m`` bytes) plus the coarse centroids.
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError

FLAT_MAX = 50_000
HNSW_M = 32
AUTO_MEMORY = "4GB"  # budget of factory="auto" when max_memory is not given
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}
PQ_MIN_TRAIN = 256 * 39  # 8-bit PQ trains 256 centroids per sub-quantiser
PQ_CHOICES = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1)


def parse_memory(value) -> int:
    """``"4GB"``, ``"512MB"``, ``"1.5G"`` or an int number of bytes -> bytes (binary units: 1 GB = 2**30)."""
    if isinstance(value, bool):
        raise ConfigError(f"memory budget: expected bytes or a string like '4GB', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ConfigError(f"memory budget must be positive, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"memory budget {value!r}: expected a number with an optional unit "
                          f"(B, KB, MB, GB, TB), e.g. '4GB'")
    out = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if out <= 0:
        raise ConfigError(f"memory budget must be positive, got {value!r}")
    return out


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def default_nlist(n: int) -> int:
    """Rule of thumb ``nlist ≈ 4·sqrt(n)``, capped so each list gets >= 39 training points."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query at the default setting: ``max(8, sqrt(nlist))`` (recall >= 0.95 on clustered data)."""
    return int(min(nlist, max(8, round(math.sqrt(nlist)))))


def estimate_memory(factory: str, n: int, d: int) -> int:
    """Approximate resident bytes of ``factory`` holding ``n`` vectors of dimension ``d``."""
    f = factory.replace(" ", "")
    parts = f.split(",")
    total = 0
    code = 4 * d
    for p in parts:
        if p.startswith("OPQ") or p.startswith("PCA"):
            total += 4 * d * d
        elif p.startswith("IVF"):
            nlist = int(re.match(r"IVF(\d+)", p).group(1))
            total += 4 * d * nlist + 8 * n
        elif p.startswith("HNSW"):
            m = int(re.match(r"HNSW(\d+)", p).group(1) or HNSW_M)
            code = 4 * d + int(2 * m * 4 * 1.1)
        elif p.startswith("PQ"):
            mm = re.match(r"PQ(\d+)(?:x(\d+))?", p)
            bits = int(mm.group(2) or 8)
            code = int(mm.group(1)) * bits // 8
        elif p.startswith("SQ8"):
            code = d
        elif p.startswith("SQfp16"):
            code = 2 * d
    return int(total + code * n)


def auto_factory(n: int, d: int, max_memory="4GB") -> tuple[str, str]:
    """Pick an ``index_factory`` string for ``n`` vectors of dimension ``d`` within ``max_memory``.

    Returns ``(factory, reason)`` where ``reason`` explains the choice in one line.
    """
    if n <= 0 or d <= 0:
        raise ConfigError(f"auto index needs at least one vector, got n={n}, d={d}")
    budget = parse_memory(max_memory)
    flat = estimate_memory("Flat", n, d)
    if n <= FLAT_MAX and flat <= budget:
        return "Flat", f"n={n} <= {FLAT_MAX}: exact search is fast enough ({format_bytes(flat)})"
    nlist = default_nlist(n)
    ivf = f"IVF{nlist},Flat"
    if estimate_memory(ivf, n, d) <= budget:
        return ivf, (f"n={n}: inverted file with nlist=4*sqrt(n)={nlist} and raw vectors "
                     f"({format_bytes(estimate_memory(ivf, n, d))} <= {format_bytes(budget)})")
    sq = f"IVF{nlist},SQ8"
    if estimate_memory(sq, n, d) <= budget:
        return sq, (f"n={n}: raw vectors need {format_bytes(flat)} > {format_bytes(budget)}; 8-bit scalar "
                    f"quantisation ({format_bytes(estimate_memory(sq, n, d))})")
    if n < PQ_MIN_TRAIN:
        raise ConfigError(f"{n} vectors of dimension {d} do not fit in {format_bytes(budget)} even with 8-bit "
                          f"scalar quantisation, and product quantisation needs >= {PQ_MIN_TRAIN} vectors to "
                          f"train; raise --max-memory")
    for m in PQ_CHOICES:
        if d % m or m > d:
            continue
        f = f"IVF{nlist},PQ{m}"
        if estimate_memory(f, n, d) <= budget:
            return f, (f"n={n}: raw vectors need {format_bytes(flat)} > {format_bytes(budget)}; "
                       f"product quantisation to {m} bytes/vector ({format_bytes(estimate_memory(f, n, d))})")
    raise ConfigError(f"no index fits {n} vectors of dimension {d} in {format_bytes(budget)}: even "
                      f"IVF{nlist},PQ1 needs {format_bytes(estimate_memory(f'IVF{nlist},PQ1', n, d))}; "
                      f"raise --max-memory")


def available_memory() -> int | None:
    """Bytes an index may use when no ``max_memory`` is given: the cache package's memory budget (one home:
    ``SVGFEAT_MEMORY_BUDGET`` if set, else MemAvailable of /proc/meminfo). None when unknown."""
    from ..cache.memory import memory_budget

    return memory_budget()


def check_memory(factory: str, n: int, d: int, max_memory=None, *, what: str = "index",
                 hint: str = "") -> int:
    """Refuse up front an index that cannot fit: ``estimate_memory(factory, n, d)`` against ``max_memory``
    (when given) or the memory available now. Returns the estimate in bytes; raises ConfigError naming the
    sizes and suggesting ``--auto`` / an IVF-PQ factory that fits."""
    need = estimate_memory(factory, n, d)
    if max_memory is not None:
        budget, src = parse_memory(max_memory), "--max-memory budget"
    else:
        budget, src = available_memory(), "memory available now"
    if budget is None or need <= budget:
        return need
    try:
        fits, _ = auto_factory(n, d, budget)
        alt = f" such as {fits!r} (what --auto picks for this budget)"
    except ConfigError:
        alt = ""
    raise ConfigError(
        f"{what} {factory!r} over {n} x {d} float32 vectors needs about {format_bytes(need)}, more than the "
        f"{src} ({format_bytes(budget)}); use `svgfeat index build --auto --max-memory SIZE` or a compressed "
        f"(IVF-PQ / SQ8) factory{alt}{hint}")


def is_exact(factory: str) -> bool:
    """True for factories that return exact neighbours (``Flat``, ``IDMap,Flat``)."""
    parts = [p for p in factory.replace(" ", "").split(",") if p and p not in ("IDMap", "IDMap2")]
    return parts == ["Flat"]
