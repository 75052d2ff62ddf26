"""What a dataset spec holds, decided from the path alone (no item is read): tar shards, parquet/arrow, a
Hugging Face dataset, or None (a folder, a file list, an image or a sample; :func:`svgfeat.open_dataset` decides)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError


def detect_format(s: str) -> str | None:
    """What a spec holds: 'wds', 'parquet', 'hf', or None (folder / file list / image / sample, decided below)."""
    if s.startswith("hf://"):
        return "hf"
    if s.startswith("sample:"):
        return None
    low = s.lower()
    if low.endswith(".tar") or (("{" in s or any(c in s for c in "*?[")) and ".tar" in low):
        return "wds"
    if low.endswith((".parquet", ".arrow")) or (any(c in s for c in "*?[{") and ".parquet" in low):
        return "parquet"
    p = Path(s)
    if p.is_dir():
        from .parquet_source import is_saved_dataset

        if is_saved_dataset(p):
            return "parquet"
        files = [f for f in p.iterdir() if not f.name.startswith(".") and f.is_file()]
        if files and not any(f.is_dir() and not f.name.startswith(".") for f in p.iterdir()):
            if all(f.name.lower().endswith(".tar") for f in files):
                return "wds"
            if all(f.name.lower().endswith(".parquet") for f in files):
                return "parquet"
    return None


def refuse_image_only_source(spec, what: str) -> None:
    """One DataError for tar / parquet / hf:// specs given where image + annotation pairs are needed."""
    kind = detect_format(str(spec))
    if kind is not None:
        raise DataError(f"{what} needs image + annotation folders; {spec} holds {kind} images only "
                        "(tar shards, parquet and hf:// sources serve extract, eval imagenet and train-ae)")
