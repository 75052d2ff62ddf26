"""The shared feature cache: one directory of safetensors shards + a JSON manifest (see manifest.py)."""

from .arrays import from_arrays
from .lock import cache_lock
from .manifest import check_compatible, read_manifest
from .owned import owned_files, remove_cache
from .reader import FeatureCache, clear_device_views, open_cache
from .verify import verify_cache

__all__ = ["FeatureCache", "open_cache", "check_compatible", "read_manifest", "clear_device_views", "from_arrays",
           "verify_cache", "cache_lock", "owned_files", "remove_cache"]
