"""Picture files: a picture encoded in memory as PNG or JPEG, with how it was made recorded in the PNG (a JSON
text chunk ``svgfeat``), then written whole by :mod:`svgfeat.atomic`; and that record read back."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def encode_image(image, ext: str = ".png", meta: dict | None = None) -> bytes:
    """A PIL image (or a uint8 / uint16 / int32 array) encoded in memory as ``ext`` (.png, or .jpg at quality 95),
    then written whole by :func:`svgfeat.atomic.write_bytes_atomic`. ``meta``: recorded in a PNG as the JSON text
    chunk ``svgfeat`` (how the picture was made: command, numerics...); read back with :func:`image_meta`."""
    import io
    import json

    from PIL import Image, PngImagePlugin

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    if ext.lower() in (".jpg", ".jpeg"):
        img.save(buf, format="JPEG", quality=95)
    elif ext.lower() == ".png":
        info = None
        if meta is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("svgfeat", json.dumps(meta, sort_keys=True))
        img.save(buf, format="PNG", pnginfo=info)
    else:
        raise ConfigError(f"picture format {ext!r}: expected .png or .jpg")
    return buf.getvalue()


def image_meta(path) -> dict | None:
    """The ``svgfeat`` record of a PNG written with ``meta`` (None when it has none)."""
    import json

    from PIL import Image

    with Image.open(path) as im:
        text = getattr(im, "text", {}).get("svgfeat")
    return None if text is None else json.loads(text)
