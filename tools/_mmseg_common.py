"""Shared by tools/mmseg_train.py and tools/mmseg_test.py (maintainer / user scripts, not part of the library).

- ``register_plugin()``: imports svgfeat's mmseg integration (SVGBackbone, BNHead, BinsDepthHead, SVGSigLoss,
  SVGPlainCheckpointHook) so configs work with or without ``custom_imports``.
- ``ResumableCheckpointHook`` (``--resume``): full mmengine checkpoints (optimizer, schedulers, message hub)
  that still load with ``torch.load(weights_only=True)``, torch >= 2.6's default and what mmengine's plain
  ``torch.load`` then does. mmengine pickles its message hub as ``HistoryBuffer`` objects (whose pickles call
  ``getattr`` on bound methods: never allow-listed) and numpy arrays; the hook stores them as plain lists and
  rebuilds them after loading. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is never set.
- ``load_config(path, cfg_options, work_dir)``: mmseg's own precedence (config < --cfg-options < --work-dir,
  default ``./work_dirs/<config stem>``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def fail(msg: str) -> None:
    print(f"Error: {msg}", file=sys.stderr)
    sys.exit(2)


def register_plugin() -> None:
    try:
        import svgfeat.integrations.mmseg  # noqa: F401
        import svgfeat.integrations.mmseg_depth  # noqa: F401
    except ImportError as e:
        fail(str(e))


def _plain(obj):
    """Recursively keep what torch's weights-only unpickler accepts: tensors, numbers, str, bool, None and
    lists / tuples / dicts of them; numpy -> lists / Python scalars; anything else (callables) is dropped."""
    import numpy as np
    import torch

    if isinstance(obj, np.generic):  # before the float check: np.float64 subclasses float
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            pv = _plain(v)
            if pv is not _DROP:
                out[k] = pv
        return out
    if isinstance(obj, (list, tuple)):
        vals = [_plain(v) for v in obj]
        return type(obj)(v for v in vals if v is not _DROP)
    return _DROP


_DROP = object()


def register_resumable_hook() -> str:
    """Register ``ResumableCheckpointHook`` in mmseg's HOOKS; returns its type name."""
    from mmengine.hooks import Hook
    from mmengine.logging import HistoryBuffer
    from mmseg.registry import HOOKS

    @HOOKS.register_module(force=True)
    class ResumableCheckpointHook(Hook):
        priority = "VERY_LOW"

        def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
            hub = checkpoint.get("message_hub") or {}
            scalars = {k: {"log": _plain(v._log_history), "count": _plain(v._count_history),
                           "max_length": int(v.max_length)}
                       for k, v in hub.get("log_scalars", {}).items() if isinstance(v, HistoryBuffer)}
            checkpoint["message_hub"] = {"svgfeat_plain": True, "log_scalars": scalars,
                                         "runtime_info": _plain(hub.get("runtime_info", {})),
                                         "resumed_keys": _plain(hub.get("resumed_keys", {}))}
            for key in ("meta", "optimizer", "param_schedulers"):
                if key in checkpoint:
                    checkpoint[key] = _plain(checkpoint[key])

        def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
            hub = checkpoint.get("message_hub")
            if isinstance(hub, dict) and hub.get("svgfeat_plain"):
                hub["log_scalars"] = {k: HistoryBuffer(v["log"], v["count"], v["max_length"])
                                      for k, v in hub["log_scalars"].items()}
                hub.pop("svgfeat_plain")

    return "ResumableCheckpointHook"


def load_config(path: str, cfg_options, work_dir):
    from mmengine.config import Config

    if not Path(path).is_file():
        fail(f"config not found: {path}")
    cfg = Config.fromfile(path)
    if cfg_options:
        root = cfg_options.get("data_root")
        cfg.merge_from_dict(cfg_options)
        if root is not None:
            propagate_data_root(cfg, root)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("./work_dirs", Path(path).stem)
    return cfg


def propagate_data_root(cfg, root: str) -> None:
    """``--cfg-options data_root=DIR`` sets the config's top-level ``data_root``, which the dataloaders copied
    when the config file was read; point every dataloader dataset that still has the config's value at DIR
    (a dataset given its own ``...dataset.data_root`` option keeps it)."""
    from mmengine.config import Config

    original = Config.fromfile(cfg.filename).get("data_root")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = (cfg.get(key) or {}).get("dataset")
        if ds is not None and ds.get("data_root") == original:
            ds["data_root"] = root


def set_launcher(cfg, launcher: str, local_rank: int) -> None:
    cfg.launcher = launcher
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
