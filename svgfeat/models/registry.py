"""A small name -> factory registry (timm style) for encoders and DiTs.

``create_model(name, **overrides)`` builds a model with random weights; weights are loaded by
:mod:`svgfeat.checkpoints`; ``create_model(name, pretrained=True)`` fetches the files registered below
(timm's pretrained configs) through :mod:`svgfeat.hub`. ``test_*`` variants are tiny so that the test-suite runs in seconds.
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


def create_model(name: str, pretrained: bool = False, **overrides):
    """Build the registered model ``name``: random weights (``overrides`` change its config), or with
    ``pretrained=True`` its released weights from the Hugging Face Hub (kwargs then go to the loader:
    device, pretrained_cfg_overlay, ...; see :mod:`svgfeat.hub`)."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    if pretrained:
        return create_pretrained(name, **overrides)
    return _REGISTRY[name](**overrides)


def create_pretrained(name: str, device="cpu", pretrained_cfg_overlay: dict | None = None, **kwargs):
    """``create_model(name, pretrained=True)``: the registered model with its Hub weights (see svgfeat.hub)."""
    if model_kind(name) == "dit":
        from .dit import load_dit

        return load_dit(name, pretrained=True, device=device, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
    from .svg import load_encoder

    return load_encoder(model=name, pretrained=True, device=device, pretrained_cfg_overlay=pretrained_cfg_overlay,
                        **kwargs)


# ------------------------------------------------------------------------- pretrained files (timm's default_cfgs)
# One place per model: repo id + file name of every released file. Override per call with
# ``pretrained_cfg_overlay={"svg": "hf://ORG/NAME/file.ckpt" | HubFile | local path}``, per process with
# ``SVGFEAT_PRETRAINED_<ROLE>`` (e.g. SVGFEAT_PRETRAINED_SVG), or on the CLI by passing --svg/--dinov3/... next to
# --pretrained. Other modules add theirs with ``svgfeat.hub.register_pretrained``.
def _register_default_pretrained():
    from ..hub import HubFile, register_pretrained

    dino = HubFile("timm/vit_small_plus_patch16_dinov3_qkvb.lvd1689m", "model.safetensors",
                   hint="or Meta's gated dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth via "
                        "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/")
    svg_ae = "pretrained/autoencoder/svg_autoencoder_dinov3s16p_vit-s_epoch40"
    register_pretrained("dinov3_vits16plus", dinov3=dino)
    register_pretrained("svg_vits16plus", dinov3=dino,
                        svg=HubFile("howlin/SVG", svg_ae + ".ckpt"),
                        svg_config=HubFile("howlin/SVG", svg_ae + ".yaml", optional=True))  # inferred if absent
    register_pretrained("svg_dit_xl",
                        dit=HubFile("howlin/SVG", "pretrained/checkpoints/V1-SVG-XL-7000K-256x256.pt"),
                        dit_config=HubFile("howlin/SVG", "pretrained/svg_xl_pretrained_config.yaml", optional=True),
                        stats=HubFile("howlin/SVG", "dinov3_sp_stats.pt",
                                      hint="it is also in the root of https://github.com/shiml20/SVG"))


_register_default_pretrained()
