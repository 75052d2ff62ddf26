"""``hf://datasets/ORG/NAME[@REV][/SPLIT-or-PATH]``: a dataset repository already in the local Hugging Face
cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``), resolved without the network.

``SPLIT`` picks ``**/SPLIT-*.parquet`` (or ``**/SPLIT/*.parquet``); a path or glob is taken inside the
snapshot. Nothing is downloaded: an uncached dataset is one error line naming it and the download command.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DataError
from .parquet_source import TableDataset, one_split

HF_SPEC = re.compile(r"^hf://datasets/(?P<org>[A-Za-z0-9][A-Za-z0-9_.-]*)/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)"
                     r"(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9_.-]*))?(?:/(?P<sub>.*))?$")


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home) / "hub"


def parse(spec: str) -> tuple[str, str, str | None, str | None]:
    m = HF_SPEC.match(spec)
    parts = [m.group(g) for g in ("org", "name", "rev")] if m else []
    sub = m.group("sub") if m else None
    if not m or any(p in ("..", ".") for p in parts if p) or (sub and any(
            c in ("..", ".") for c in sub.replace("\\", "/").split("/"))) or (sub or "").startswith("/"):
        raise DataError(f"{spec!r} is not a Hugging Face dataset spec; expected hf://datasets/ORG/NAME[@REV][/SPLIT]")
    return parts[0], parts[1], parts[2], sub or None


def snapshot(org: str, name: str, rev: str | None) -> tuple[Path, Path]:
    """(repo cache folder, snapshot folder) of a cached dataset; DataError naming it when not cached."""
    repo = hub_cache() / f"datasets--{org}--{name}"
    rev = rev or "main"
    commit = rev
    ref = repo / "refs" / rev
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    snap = repo / "snapshots" / commit
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", commit) or not snap.is_dir():
        raise DataError(f"hf://datasets/{org}/{name}{'' if rev == 'main' else '@' + rev} is not in the local Hugging "
                        f"Face cache ({hub_cache()}); download it first (hf download --repo-type dataset "
                        f"{org}/{name}) or pass the parquet files")
    return repo, snap


def _inside(repo: Path, files) -> list[str]:
    real = repo.resolve()
    out = []
    for f in files:
        r = Path(f).resolve()
        if real not in r.parents:
            raise DataError(f"{f} points outside the cached dataset {repo}; refusing to follow it")
        out.append(str(f))
    return out


def open_hf(spec) -> TableDataset:
    org, name, rev, sub = parse(str(spec))
    repo, snap = snapshot(org, name, rev)
    every = sorted(str(p) for p in snap.rglob("*.parquet") if p.is_file())
    if sub is None:
        files = one_split(every, f"hf://datasets/{org}/{name}")
    elif not any(c in sub for c in "*?[/") and not sub.endswith(".parquet"):
        files = [f for f in every if os.path.basename(f).startswith(f"{sub}-")
                 or os.path.basename(os.path.dirname(f)) == sub]
    else:
        files = sorted(str(p) for p in snap.glob(sub) if p.is_file())
    if not files:
        raise DataError(f"no parquet files for {spec} in {snap}" + (
            f" (splits there: {', '.join(__import__('svgfeat.data.parquet_source', fromlist=['x']).splits_in(every))})"
            if every else ""))
    ds = TableDataset(_inside(repo, files), str(spec), "parquet")
    ds.kind = "hf"
    return ds
