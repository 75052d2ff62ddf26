"""A small name -> factory registry (timm style) for encoders and DiTs.

``create_model(name, **overrides)`` builds a model with random weights; weights are loaded by
:mod:`svgfeat.checkpoints`. ``test_*`` variants are tiny so that the test-suite runs in seconds.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

_REGISTRY: dict[str, Callable] = {}
_KIND: dict[str, str] = {}


def register_model(kind: str):
    """Decorator: register ``fn`` under its function name. ``kind`` is 'encoder' or 'dit'."""

    def deco(fn):
        _REGISTRY[fn.__name__] = fn
        _KIND[fn.__name__] = kind
        return fn

    return deco


def _ensure_loaded():
    # importing the model modules runs their @register_model decorators
    from . import dit, svg  # noqa: F401


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted registered names matching a glob ``pattern`` (and ``kind``: 'encoder' | 'dit')."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern) and (kind is None or _KIND[n] == kind))


def model_kind(name: str) -> str:
    _ensure_loaded()
    if name not in _KIND:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _KIND[name]


def create_model(name: str, **overrides):
    """Build the registered model ``name`` with random weights; ``overrides`` change its config."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name](**overrides)
