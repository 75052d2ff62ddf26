"""Reading the small text files users give (file lists, label files, ``classes.txt``, split lists): UTF-8 only,
a file that is not is ONE DataError naming the file, the offending byte and its line, never a traceback."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError


def read_text_lines(path, what: str = "text file") -> list[str]:
    """The lines of ``path`` decoded as UTF-8 (a BOM is dropped); DataError when it is not UTF-8 or unreadable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{what} {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}); "
                        "save it as UTF-8") from None
    return text.splitlines()
