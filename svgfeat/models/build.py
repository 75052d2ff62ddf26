"""The builder: the one module that resolves Hub files, reads weights and builds models.

Model files (:mod:`.svg`, :mod:`.dit`) define architectures and register them (:mod:`.registry`);
:mod:`svgfeat.hub` knows which files exist on the Hugging Face Hub and fetches them. This module joins them:
``create_model`` (random or pretrained), ``list_models``, ``load_encoder`` (encoder weight files through
:mod:`.loading`) and ``load_dit``. Imports go one way: build -> (hub, loading, svg, dit, registry).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoints as ck
from ..errors import CheckpointError, ConfigError, SvgfeatError
from ..hub import check_available, hub_files, is_hub_spec, pretrained_cfg, resolve, resolve_all
from ..numerics import parse_device
from . import dit as _dit  # noqa: F401  (registers the DiTs)
from . import loading
from . import svg as _svg  # noqa: F401  (registers the encoders)
from .dit import SVGDiT, infer_dit_config, read_dit_config
from .registry import factory, kind_of, registered
from .svg import SVGEncoder

__all__ = ["create_model", "list_models", "model_kind", "load_encoder", "load_dit", "read_dinov3",
           "pretrained_files", "check_pretrained"]


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted registered names matching a glob ``pattern`` (and ``kind``: 'encoder' | 'dit')."""
    return registered(pattern, kind)


def model_kind(name: str) -> str:
    return kind_of(name)


def create_model(name: str, pretrained: bool = False, **overrides):
    """Build the registered model ``name``: random weights (``overrides`` change its config), or with
    ``pretrained=True`` its released weights from the Hugging Face Hub (kwargs then go to the loader:
    device, pretrained_cfg_overlay, ...; see :mod:`svgfeat.hub`)."""
    make = factory(name)
    if not pretrained:
        return make(**overrides)
    if kind_of(name) == "dit":
        return load_dit(name, pretrained=True, **overrides)
    return load_encoder(model=name, pretrained=True, **overrides)


def pretrained_files(model: str, roles, overlay: dict | None = None) -> dict:
    """role -> HubFile of ``model``'s registered files among ``roles`` (local overrides left out); feed several
    models' files to :func:`svgfeat.hub.check_available` to name every missing file in one error."""
    cfg = pretrained_cfg(model, overlay)
    return hub_files({r: "hf" for r in roles if r in cfg}, model, overlay)


def check_pretrained(*requests) -> None:
    """Locate every Hub file of ``requests`` -- ``(model, {role: spec})`` pairs; local paths and None are
    skipped -- at once (cache lookups offline, one listing per repo online) and name all the missing ones in
    ONE :class:`CheckpointError`, before anything is downloaded or built."""
    files = {}
    for model, specs in requests:
        for role, f in hub_files({r: v for r, v in specs.items() if v is not None}, model).items():
            files[role if role not in files else f"{model}.{role}"] = f
    check_available(files)


# ----------------------------------------------------------------------------------------------- encoders
def read_dinov3(spec) -> tuple[dict, dict]:
    """(state dict, provenance) of a DINOv3 weight source: a path, ``"hf"`` (timm's Hub copy) or ``hf://``."""
    prov = None
    if is_hub_spec(spec):
        spec, prov = resolve(spec, "svg_vits16plus", "dinov3")
    return loading.read_dinov3(spec, prov)


def load_encoder(dinov3=None, svg=None, svg_config=None, alignment: str = "batch", device="cpu",
                 model: str | None = None, fixed_stats: dict | None = None, dtype=torch.float32,
                 pretrained: bool = False, pretrained_cfg_overlay: dict | None = None,
                 stage: int | None = None) -> SVGEncoder:
    """Build an :class:`SVGEncoder` from weight files (see :mod:`svgfeat.models.loading`).

    ``pretrained=True``: the released files of ``model`` (default ``svg_vits16plus``: DINOv3 ViT-S/16+ from
    timm's Hub repo + the SVG autoencoder from ``howlin/SVG``) fetched through the Hugging Face cache, for
    every file not given explicitly. Any weight argument may also be a Hub spec: ``"hf"`` (that model's
    registered file) or ``"hf://ORG/NAME/path[@revision]"``. ``pretrained_cfg_overlay`` replaces registered
    files by role (``dinov3``, ``svg``, ``svg_config``). Provenance of Hub files: repo, revision, sha256.
    Every missing Hub file is named in one error before anything is downloaded.

    ``svg`` may be an original SVG checkpoint or an SVG-T2I Autoencoder-R / -P one (the family is read from
    the weights and the YAML); ``stage`` records the SVG-T2I stage (else taken from a ``stage{n}`` file or
    model name, e.g. ``svg_t2i_p_vits16plus_stage3``).
    """
    parse_device(device)  # cuda on a machine without CUDA: one ConfigError, before any file is read
    specs = {"dinov3": dinov3, "svg": svg, "svg_config": svg_config}
    hub_model = model or "svg_vits16plus"
    if pretrained:
        cfg = pretrained_cfg(hub_model, pretrained_cfg_overlay)
        specs = {role: v if v is not None else ("hf" if role in cfg else None) for role, v in specs.items()}
    if stage is None and model and "t2i" in model:
        stage = loading._stage_from_names(model)
    hub_prov = {}
    if any(is_hub_spec(v) for v in specs.values()):
        for role, (path, prov) in resolve_all(specs, hub_model, pretrained_cfg_overlay).items():
            specs[role], hub_prov[role] = path, prov
        model = None  # the architecture is read from the files, exactly as for the same files given by path
    enc = loading.build_encoder(dinov3=specs["dinov3"], svg=specs["svg"], svg_config=specs["svg_config"],
                                alignment=alignment, device=device, model=model, fixed_stats=fixed_stats,
                                dtype=dtype, stage=stage)
    for role, prov in hub_prov.items():
        if prov:
            enc.provenance[role] = {**enc.provenance.get(role, {}), **prov}
    return enc


# ----------------------------------------------------------------------------------------------- DiTs
def load_dit(path="svg_dit_xl", config=None, device="cpu", pretrained: bool = False,
             pretrained_cfg_overlay: dict | None = None) -> SVGDiT:
    """Load an SVG DiT (eval mode) from an official ``.pt`` (``{"ema"|"model": sd}``) or svgfeat safetensors.

    config: None (svgfeat metadata / sidecar JSON, else inferred from the key shapes), a DiTConfig or dict,
    or a path to the official YAML (``model.params``) / svgfeat JSON. Keys are checked strictly.
    ``model.provenance`` = {path, format, sha256, config} (+ repo, filename, revision for Hub files).
    ``load_dit("svg_dit_xl", pretrained=True)`` fetches the released weights through the Hugging Face cache
    (see :mod:`svgfeat.hub`); ``path`` may also be ``"hf"`` or ``"hf://ORG/NAME/file.pt[@revision]"``.
    """
    parse_device(device)
    name = "svg_dit_xl"
    if isinstance(path, str) and path in list_models(kind="dit"):
        if not pretrained:
            raise ConfigError(f"load_dit({path!r}): a model name needs pretrained=True (or pass a weight file; "
                              f"svgfeat.create_model({path!r}) builds it with random weights)")
        name, path = path, "hf"
    elif pretrained and path is None:
        path = "hf"
    hub_prov = None
    if is_hub_spec(path):
        specs = {"dit": path}
        if config is None and pretrained and "dit_config" in pretrained_cfg(name, pretrained_cfg_overlay):
            specs["dit_config"] = "hf"
        got = resolve_all(specs, name, pretrained_cfg_overlay)
        path, hub_prov = got["dit"]
        if "dit_config" in got:
            config = got["dit_config"][0]
    elif is_hub_spec(config):
        config = resolve(config, name, "dit_config", pretrained_cfg_overlay)[0]
    model = _load_dit_file(path, config, device)
    if hub_prov:
        model.provenance.update(hub_prov)
    return model


def _state_from_file(raw: dict, path) -> dict:
    for key in ("ema", "model", "state_dict"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected {{'ema': state_dict}}, {{'model': state_dict}} or a state dict "
                              f"of tensors; top-level keys are {sorted(raw)[:10]}")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in raw):
            raw = {k[len(prefix):]: v for k, v in raw.items()}
    return raw


def _load_dit_file(path, config, device) -> SVGDiT:
    p = Path(path)
    if p.suffix in (".yaml", ".yml", ".json"):
        raise CheckpointError(f"{p} is a config file; pass the weights as path and the config as config=")
    try:
        raw = ck.load_file(p)
    except SvgfeatError:
        raise
    except Exception as e:  # any other unpickler failure on a corrupt file
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    sd = _state_from_file(raw, p)
    fmt = "svgfeat" if p.suffix == ".safetensors" else "official"
    if config is None and fmt == "svgfeat":
        config = ck.read_safetensors_config(p)
        for side in (p.with_suffix(".json"), Path(str(p) + ".json")):
            if config is None and side.is_file():
                config = side
    cfg = infer_dit_config(sd) if config is None else read_dit_config(config)
    with torch.device("meta"):
        model = SVGDiT(cfg)
    model = model.to_empty(device="cpu")
    ck.load_strict(model, sd, "SVG DiT", str(p))
    model.provenance = {"path": str(p.resolve()), "format": fmt, "sha256": ck.sha256_file(p),
                        "config": cfg.to_dict()}
    return model.to(device).eval()
