"""The one place that reads and writes weight files.

Readers: Meta DINOv3 ``.pth``, timm/HF ``.safetensors``, official SVG Lightning ``.ckpt`` (+ YAML),
official DiT ``.pt`` (``{"ema": ...}``) and svgfeat's own safetensors + JSON config. Every pickle is
read with ``torch.load(weights_only=True)``; a file that tries to run code is refused.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from . import regular_files
from .errors import CheckpointError, ConfigError

CONFIG_KEY = "svgfeat_config"  # safetensors metadata key holding the JSON config
_SHA_CACHE: dict[tuple, str] = {}


def sha256_file(path) -> str:
    """Hex sha256 of a file (memoised on path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with regular_files.opened(p, "weight file", error=CheckpointError) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _check_exists(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weight file not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"expected a weight file, got a directory: {p}")
    regular_files.check_regular(p, "weight file", error=CheckpointError)
    if p.stat().st_size == 0:
        raise CheckpointError(f"weight file is empty (0 bytes): {p}")
    return p


def load_file(path) -> dict:
    """Read a weight file into a dict (tensors and plain containers). Never executes pickled code."""
    p = _check_exists(path)
    with regular_files.checked_path(p, "weight file", error=CheckpointError) as q:  # never a FIFO or device
        return _load_checked(p, q)


def _load_checked(p: Path, q: str) -> dict:
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load

        try:
            return st_load(q)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p.name}: not a valid safetensors file (truncated or corrupt?): {e}") from None
    try:
        return torch.load(q, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else "unsupported pickle content"
        if "Weights only load failed" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise CheckpointError(
                f"{p.name}: refused to load: the file contains pickled objects that are not plain tensors "
                f"(it could execute code). svgfeat only loads weights with weights_only=True. ({msg})") from None
        raise CheckpointError(f"{p.name}: corrupt or truncated pickle: {msg}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError) as e:  # what torch.load raises on junk bytes varies
        first = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise CheckpointError(f"{p.name}: cannot read weight file (truncated or corrupt?): {first}") from None


def read_safetensors_config(path) -> dict | None:
    """The JSON config stored in a svgfeat safetensors file's metadata (None if absent)."""
    from safetensors import safe_open

    try:
        with regular_files.checked_path(path, "weight file", error=CheckpointError) as q, \
                safe_open(q, framework="pt") as f:
            meta = f.metadata() or {}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"{Path(path).name}: not a valid safetensors file: {e}") from None
    return json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None


def save_safetensors(path, state_dict: dict, config: dict | None = None, sidecar_json: bool = True) -> Path:
    """Write ``state_dict`` (+ JSON ``config`` in the metadata and beside it), each file atomically."""
    from safetensors.torch import save_file

    from .atomic import atomic_path, write_bytes_atomic

    p = Path(path)
    if p.exists() and not p.is_file():  # never rename a temporary file over a device or a folder
        raise CheckpointError(f"cannot write {p}: it exists and is not a regular file")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {CONFIG_KEY: json.dumps(config, sort_keys=True)} if config is not None else None
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    if config is not None and sidecar_json:
        write_bytes_atomic(p.with_suffix(".json"), json.dumps(config, indent=2, sort_keys=True).encode())
    return p


def save_torch(path, obj) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file beside it, fsync, rename)."""
    from .atomic import atomic_file

    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


def load_yaml(path) -> dict:
    import yaml

    text = regular_files.read_text(path, "YAML config", error=ConfigError)
    try:
        cfg = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"cannot read YAML config {path}: {' '.join(str(e).split())}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"YAML config {path}: expected a mapping at the top, got a {type(cfg).__name__}")
    return cfg


# AE YAML fields that must be positive integers / lists of them (a wrong type is one line, not a traceback)
_YAML_INTS = ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "embed_dim", "depth",
              "num_heads", "patch_size", "hidden_size", "img_size", "out_channels", "mlp_dim", "num_layers")
_YAML_INT_LISTS = ("ch_mult", "attn_resolutions")


def _check_yaml_section(name: str, sec) -> dict:
    if not isinstance(sec, dict):
        raise ConfigError(f"YAML {name}: expected a mapping, got {type(sec).__name__} {str(sec)[:40]!r}")
    for k, v in sec.items():
        if k in _YAML_INTS and (type(v) is not int or v <= 0):
            raise ConfigError(f"YAML {name}.{k}: expected a positive integer, got {str(v)[:40]!r}")
        if k in _YAML_INT_LISTS and (not isinstance(v, list) or any(type(x) is not int or x < 0 for x in v)):
            raise ConfigError(f"YAML {name}.{k}: expected a list of integers, got {str(v)[:40]!r}")
        if k == "dropout" and (type(v) not in (int, float) or not 0 <= v < 1):
            raise ConfigError(f"YAML {name}.{k}: expected a number in [0, 1), got {str(v)[:40]!r}")
    return dict(sec)


# ----------------------------------------------------------------------------- state-dict helpers
def strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _fmt_keys(keys, n=8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(module: torch.nn.Module, sd: dict, what: str, source: str = "") -> None:
    """Load ``sd`` into ``module``; any missing/unexpected key or shape mismatch raises one readable error."""
    own = module.state_dict()
    check_state(own, sd, what, source)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def check_state(own: dict, sd: dict, what: str, source: str = "") -> None:
    """Compare a state dict ``sd`` against the expected ``own`` (key -> tensor); raise on any difference."""
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape)]
    where = f" in {source}" if source else ""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(sorted(shapes)[:4])}")
    if problems:
        raise CheckpointError(f"{what} weights{where} do not fit the model (wrong architecture or config?): "
                              + " | ".join(problems))
    bad = value_problems(own, sd)
    if bad:
        raise CheckpointError(f"{what} weights{where} are unusable: " + " | ".join(bad))


def value_problems(own: dict, sd: dict) -> list[str]:
    """Weights the model cannot hold: integer/bool tensors where it has floating ones (a cast would silently
    truncate nothing into something), and NaN/Inf values (they poison every feature). One problem line each."""
    dtypes, finite = [], []
    for k in sorted(set(own) & set(sd)):
        v, want = sd[k], own[k]
        if not isinstance(v, torch.Tensor) or not want.is_floating_point():
            continue
        if not v.is_floating_point():  # int, bool, complex
            dtypes.append(f"{k}: {str(v.dtype).replace('torch.', '')}")
        elif not bool(torch.isfinite(v).all()) and (want.is_meta or bool(torch.isfinite(want).all())):
            finite.append(k)  # (a buffer the model itself keeps non-finite, e.g. unset fixed stats, may stay so)
    out = []
    if dtypes:
        out.append(f"{len(dtypes)} tensor(s) of a non-float dtype where the model has floats: {'; '.join(dtypes[:4])}")
    if finite:
        out.append(f"{len(finite)} tensor(s) holding NaN/Inf: {_fmt_keys(finite, 4)}")
    return out


# ----------------------------------------------------------------------------- official SVG checkpoints
SVG_SKIPPED_PREFIXES = ("loss.", "norm_vit.")  # training-only / unused by the official model
SVG_PARTS = ("encoder.", "extra_vit.", "decoder.")


def split_svg_state(sd: dict, source: str = "") -> dict:
    """Split an official SVG autoencoder state dict into parts.

    Returns {"encoder": Meta-layout DINOv3 keys or {}, "extra_vit": ..., "decoder": ..., "mask_token":
    tensor or None}. ``loss.*`` and ``norm_vit.*`` are skipped explicitly; anything else is an error.
    """
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    parts = {name[:-1]: strip_prefix(sd, name) for name in SVG_PARTS}
    known = {k for k in sd if k.startswith(SVG_PARTS + SVG_SKIPPED_PREFIXES) or k == "mask_token"}
    unknown = set(sd) - known
    if unknown:
        raise CheckpointError(f"unexpected keys in SVG checkpoint {source}: {_fmt_keys(unknown)}")
    if not parts["extra_vit"] and not parts["decoder"]:
        raise CheckpointError(f"{source or 'file'} is not an SVG autoencoder checkpoint "
                              "(no 'extra_vit.*' or 'decoder.*' keys)")
    parts["mask_token"] = sd.get("mask_token")
    return parts


def svg_config_from_yaml(cfg: dict) -> dict:
    """Pick the parts of an official AE YAML that define the model (ddconfig, extra_vit_config, dino name)."""
    model = cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {}
    params = model.get("params", cfg.get("params", cfg))
    if not isinstance(params, dict):
        raise ConfigError(f"YAML model.params: expected a mapping, got {type(params).__name__}")
    out = {}
    if model.get("target"):
        out["target"] = str(model["target"])
    if params.get("ddconfig"):
        out["ddconfig"] = _check_yaml_section("model.params.ddconfig", params["ddconfig"])
    if params.get("extra_vit_config"):
        out["extra_vit_config"] = _check_yaml_section("model.params.extra_vit_config", params["extra_vit_config"])
    dc = params.get("dinoconfig") or {}
    if not isinstance(dc, dict):
        raise ConfigError(f"YAML model.params.dinoconfig: expected a mapping, got {type(dc).__name__}")
    if dc.get("model_name"):
        out["dino_model_name"] = dc["model_name"]
    if not (set(out) & {"ddconfig", "extra_vit_config"}):
        raise ConfigError("YAML has no model.params.ddconfig / extra_vit_config: not an official SVG AE config")
    return out


# ----------------------------------------------------------------------------- SVG family detection
T2I_TARGET = "dinov3_decoder"  # SVG-T2I model classes: ldm.models.dinov3_decoder_{native_resolution,imagenet}


def svg_family_from_weights(parts: dict, source: str = "") -> str:
    """'svg' | 't2i-r' | 't2i-p' from the keys of :func:`split_svg_state` parts.

    SVG-T2I R: ``extra_vit.freqs`` (learnable RoPE); original SVG: ``extra_vit.class_token`` (torchvision
    ViT); no ``extra_vit.*`` at all: SVG-T2I P (pixel decoder on the DINO channels alone).
    """
    ev = parts["extra_vit"]
    if "freqs" in ev:
        return "t2i-r"
    if "class_token" in ev:
        return "svg"
    if ev:
        raise CheckpointError(f"{source or 'file'}: residual encoder weights (extra_vit.*) are neither the SVG "
                              f"torchvision ViT (class_token) nor the SVG-T2I RoPE ViT (freqs); found keys like "
                              f"{_fmt_keys(list(ev)[:5], 5)}")
    return "t2i-p"


def svg_family_from_yaml(yaml_cfg: dict) -> str | None:
    """Family an official AE YAML (parsed by :func:`svg_config_from_yaml`) declares, or None if it does not say."""
    evc = yaml_cfg.get("extra_vit_config")
    if evc:
        return "t2i-r" if "rope" in str(evc.get("vit_type", "")).lower() else "svg"
    if T2I_TARGET in yaml_cfg.get("target", "") or "ddconfig" in yaml_cfg:
        return "t2i-p"  # extra_vit_config: null -> no residual branch
    return None


def infer_ddconfig(decoder_sd: dict) -> dict:
    """Recover the decoder's ddconfig from the shapes of its weights (for YAML-less loading)."""
    try:
        z = decoder_sd["conv_in.weight"].shape[1]
        ch = decoder_sd["conv_out.weight"].shape[1]
        levels = sorted({int(k.split(".")[1]) for k in decoder_sd if k.startswith("up.")})
        n = len(levels)
        ch_mult = [decoder_sd[f"up.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n)]
        nrb = len({k.split(".")[3] for k in decoder_sd if k.startswith("up.0.block.")}) - 1
        attn_levels = sorted({int(k.split(".")[1]) for k in decoder_sd if ".attn." in k and k.startswith("up.")})
        out_ch = decoder_sd["conv_out.weight"].shape[0]
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"cannot infer the decoder config from its weights (missing {e}); pass the YAML") from None
    resolution = 256
    base = resolution // 2 ** (n - 1)
    attn_res = [base * 2 ** (n - 1 - i) for i in attn_levels]
    return dict(z_channels=z, ch=ch, ch_mult=ch_mult, num_res_blocks=nrb, attn_resolutions=attn_res,
                resolution=resolution, in_channels=3, out_ch=out_ch, dropout=0.0)


def infer_residual_config(res_sd: dict) -> dict:
    """Recover the residual ViT config (depth, width, mlp, out dim, grid) from its weights."""
    try:
        dim = res_sd["class_token"].shape[-1]
        depth = len({k.split(".")[2] for k in res_sd if k.startswith("encoder.layers.")})
        mlp = res_sd["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
        out_dim = res_sd["heads.2.weight"].shape[0]
        patch = res_sd["conv_proj.weight"].shape[-1]
        seq = res_sd["encoder.pos_embedding"].shape[1] - 1
    except KeyError as e:
        raise CheckpointError(f"residual encoder weights lack {e}; not an SVG 'extra_vit' state dict") from None
    grid = int(round(seq ** 0.5))
    return dict(image_size=grid * patch, patch_size=patch, depth=depth, dim=dim, mlp_dim=mlp, out_dim=out_dim)
