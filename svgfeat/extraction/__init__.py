"""Dataset -> encoder -> feature cache (see :mod:`svgfeat.extraction.engine`).

Parts: :mod:`.request` (validated options, the manifest request, reuse/refusal), :mod:`.loader` (one
persistent loader per rank), :mod:`.encode` (the device step, precision), :mod:`.writer` (background
shard writer), :mod:`.resume` (re-hashing reuse, final manifest), :mod:`.output` (lock, overwrite,
input/output containment).
"""

from .engine import extract
from .request import DEFAULT_GROUPS, PRECISIONS, Options, encoder_spec, validate_groups
from .resume import verify_cache

__all__ = ["extract", "DEFAULT_GROUPS", "PRECISIONS", "Options", "encoder_spec", "validate_groups", "verify_cache"]
