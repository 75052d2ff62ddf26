"""The name -> factory table (timm style) that model files register their architectures in.

Model files (:mod:`.svg`, :mod:`.dit`) decorate their factories with ``@register_model(kind)``; this module
imports none of them (they import it). The public entry points -- ``create_model``, ``list_models``,
``load_encoder``, ``load_dit`` -- live in :mod:`svgfeat.models.build`, the one builder, which imports every model
file so that the table is complete there. ``test_*`` variants are tiny so that the test-suite runs in seconds.
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


def registered(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted names registered so far matching a glob ``pattern`` (and ``kind``: 'encoder' | 'dit')."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern) and (kind is None or _KIND[n] == kind))


def kind_of(name: str) -> str:
    if name not in _KIND:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(registered())}")
    return _KIND[name]


def factory(name: str) -> Callable:
    """The registered factory of ``name`` (random weights; its kwargs override the config)."""
    kind_of(name)
    return _REGISTRY[name]
