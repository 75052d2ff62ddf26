"""Images behind index ids, as small JPEG thumbnails (for the HTML report and the HTTP service)."""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

from ..errors import DataError

THUMB_SIZE = 160


@functools.lru_cache(maxsize=4)
def _sample_dataset(spec: str):
    from ..data import open_dataset

    ds = open_dataset(spec)
    return ds, {p: i for i, p in enumerate(ds.paths)}


def item_path(meta: dict, i: int) -> str | None:
    """Absolute path (or ``sample:...`` id) of index id ``i``; None when the index has no paths."""
    paths = meta.get("paths")
    if paths is None or not 0 <= i < len(paths):
        return None
    root = meta.get("root")
    if root == "sample:":
        return f"sample:{paths[i]}"
    return str(Path(root) / paths[i]) if root else str(paths[i])


def open_item(meta: dict, i: int):
    """PIL RGB image of index id ``i`` (DataError if unknown or unreadable)."""
    from ..data.decode import load_image

    p = item_path(meta, i)
    if p is None:
        raise DataError(f"id {i} has no image path in this index")
    if p.startswith("sample:"):
        rel = p[len("sample:"):]
        spec = "sample:photos" if rel.startswith("photos/") else "sample:" + "/".join(rel.split("/")[:2])
        ds, pos = _sample_dataset(spec)
        if rel not in pos:
            raise DataError(f"{p} is not in {spec}")
        return ds.load(pos[rel])
    return load_image(p)


def thumbnail_jpeg(img, size: int = THUMB_SIZE, quality: int = 80) -> bytes:
    """PIL image -> JPEG bytes with the longer side at most ``size`` pixels."""
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def item_thumb_uri(meta: dict, i: int, size: int = THUMB_SIZE) -> str | None:
    """``data:`` URI of id ``i``'s thumbnail, or None when its image cannot be read."""
    try:
        return data_uri(thumbnail_jpeg(open_item(meta, i), size))
    except (DataError, OSError):
        return None
