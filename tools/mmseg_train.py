"""Train an mmseg model (segmentation or depth) that uses svgfeat's SVGBackbone, like mmsegmentation's
tools/train.py.

    python tools/mmseg_train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options k=v ...]
    python -m torch.distributed.run --nproc-per-node 8 tools/mmseg_train.py CONFIG --launcher pytorch

Shipped configs: ``python -c "from svgfeat.integrations.mmseg import config_path; print(config_path('linear'))"``
(``linear``, ``upernet``, ``svg_linear_nyu_416x544_38k.py``).

Checkpoints: by default the configs save plain checkpoints (weights + JSON metadata, SVGPlainCheckpointHook),
loadable anywhere with ``torch.load(weights_only=True)`` but not resumable. ``--resume`` switches to full
checkpoints (optimizer, schedulers, message hub stored as plain lists, so they still load with
``torch.load(weights_only=True)``) and resumes from the latest one in the work dir (a fresh start when there
is none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmseg_common import fail, load_config, register_plugin, register_resumable_hook, set_launcher  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description="Train an mmseg model with svgfeat's SVGBackbone")
    p.add_argument("config", help="train config file path")
    p.add_argument("--work-dir", help="the dir to save logs and models (default ./work_dirs/<config stem>)")
    p.add_argument("--resume", action="store_true",
                   help="save full (resumable) checkpoints and resume from the latest one in the work dir")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction,
                   help="override config settings, key=value (lists: key='[a,b]'), merged into the config")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.config).is_file():  # before importing anything that may warn
        fail(f"config not found: {args.config}")
    register_plugin()
    from mmengine.runner import Runner

    from svgfeat.errors import SvgfeatError

    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    set_launcher(cfg, args.launcher, args.local_rank)
    if args.amp:
        if cfg.optim_wrapper.type not in ("OptimWrapper", "AmpOptimWrapper"):
            fail(f"--amp needs optim_wrapper.type 'OptimWrapper', the config has {cfg.optim_wrapper.type!r}")
        cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale = "AmpOptimWrapper", "dynamic"
    if args.resume:
        hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != "SVGPlainCheckpointHook"]
        cfg.custom_hooks = hooks + [dict(type=register_resumable_hook())]
        if cfg.get("default_hooks", {}).get("checkpoint"):
            cfg.default_hooks.checkpoint.update(save_optimizer=True, save_param_scheduler=True)
    cfg.resume = bool(args.resume)
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
    except SvgfeatError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
