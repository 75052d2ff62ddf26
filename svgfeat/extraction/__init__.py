"""Dataset -> encoder -> feature cache (see :mod:`svgfeat.extraction.engine`).

Parts: :mod:`.request` (validated options, the manifest request, reuse/refusal), :mod:`.loader` (one
persistent loader per rank), :mod:`.encode` (the device step, precision), :mod:`.writer` (background
shard writer), :mod:`.resume` (re-hashing reuse, final manifest), :mod:`.output` (lock, overwrite,
input/output containment).
"""

from ..cache.verify import verify_cache  # noqa: F401  (lives with the cache; old import path)
from .engine import extract
from .request import DEFAULT_GROUPS, PRECISIONS, Options, encoder_spec, validate_groups

__all__ = ["extract", "DEFAULT_GROUPS", "PRECISIONS", "Options", "encoder_spec", "validate_groups", "verify_cache"]
