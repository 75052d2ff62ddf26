"""Evaluate a checkpoint of an mmseg model that uses svgfeat's SVGBackbone, like mmsegmentation's tools/test.py.

    python tools/mmseg_test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--out DIR] [--cfg-options k=v ...]

Loads the plain checkpoints of the shipped configs (SVGPlainCheckpointHook) and the resumable ones written by
``tools/mmseg_train.py --resume`` (both load with torch's weights-only unpickler).
``--show-dir DIR`` draws every prediction (segmentation configs: SegVisualizationHook) under DIR/vis_data/vis_image/;
``--out`` writes the raw predictions (mmseg's ``format_only`` output: label / depth PNGs) to DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmseg_common import fail, load_config, register_plugin, set_launcher  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description="Test (evaluate) an mmseg model with svgfeat's SVGBackbone")
    p.add_argument("config", help="test config file path")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--work-dir", help="the dir to save the evaluation logs (default ./work_dirs/<config stem>)")
    p.add_argument("--out", help="write the predictions (PNG files) to this directory")
    p.add_argument("--show-dir", help="save painted predictions under SHOW_DIR/vis_data/vis_image/")
    p.add_argument("--cfg-options", nargs="+", action=DictAction,
                   help="override config settings, key=value (lists: key='[a,b]'), merged into the config")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.config).is_file():  # before importing anything that may warn
        fail(f"config not found: {args.config}")
    if not Path(args.checkpoint).is_file():
        fail(f"checkpoint not found: {args.checkpoint}")
    register_plugin()
    from mmengine.runner import Runner

    from svgfeat.errors import SvgfeatError

    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    set_launcher(cfg, args.launcher, args.local_rank)
    cfg.load_from, cfg.resume = args.checkpoint, False
    if args.show_dir:
        vis = cfg.get("default_hooks", {}).get("visualization")
        if not vis:
            fail("--show-dir needs a visualization hook in default_hooks (the segmentation configs have one)")
        vis.update(draw=True, interval=1)
        cfg.visualizer["save_dir"] = args.show_dir  # as mmseg's tools/test.py
    if args.out:
        cfg.test_evaluator = dict(cfg.test_evaluator, format_only=False, output_dir=args.out, keep_results=True)
    try:
        runner = Runner.from_cfg(cfg)
        metrics = runner.test()
    except SvgfeatError as e:
        fail(str(e))
    print({k: round(float(v), 4) if hasattr(v, "__float__") else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()
