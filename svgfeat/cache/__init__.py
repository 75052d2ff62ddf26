"""The shared feature cache: one directory of safetensors shards + a JSON manifest (see manifest.py)."""

from .manifest import check_compatible, read_manifest
from .reader import FeatureCache, clear_device_views, open_cache

__all__ = ["FeatureCache", "open_cache", "check_compatible", "read_manifest", "clear_device_views"]
