"""Write an embedded sample dataset to disk in a layout mmseg's file-based pipelines read (no download).

    python tools/write_sample.py sample:digitseg/val OUT [--layout ade20k|folder] [--split train] [--limit N]
    python tools/write_sample.py sample:depth/val OUT [--layout nyu-mmseg|folder] [--split test] [--limit N]

Images are written as JPEG in the mmseg layouts (ade20k, nyu-mmseg), as mmseg's ADE20KDataset and NYUDataset
read them, so the shipped configs read the data as they are (``--cfg-options data_root=OUT``). Useful to
smoke-test tools/mmseg_train.py and tools/mmseg_test.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description="Write sample:digitseg / sample:depth to disk")
    p.add_argument("spec", help="sample:digitseg/train|val or sample:depth/train|val")
    p.add_argument("out", help="output folder")
    p.add_argument("--layout", default=None, help="ade20k|folder (digitseg), nyu-mmseg|folder (depth)")
    p.add_argument("--split", default="train", help="split folder name to write (train/val/test)")
    p.add_argument("--limit", type=int, default=None, help="first N samples only")
    p.add_argument("--overwrite", action="store_true", help="replace files in OUT that svgfeat did not write")
    args = p.parse_args(argv)
    from svgfeat.errors import SvgfeatError

    try:
        if args.spec.startswith("sample:depth"):
            from svgfeat.data.depth import open_depth_dataset, write_depth_folder

            layout = args.layout or "nyu-mmseg"
            ext = ".jpg" if layout == "nyu-mmseg" else ".png"  # mmseg's NYUDataset reads *.jpg images

            def write(ds, out, layout, split):
                return write_depth_folder(ds, out, layout=layout, split=split, image_ext=ext, overwrite=args.overwrite)

            ds = open_depth_dataset(args.spec)
        elif args.spec.startswith("sample:digitseg"):
            from svgfeat.data.segmentation import open_seg_dataset, write_folder_dataset

            layout = args.layout or "ade20k"
            ext = ".jpg" if layout == "ade20k" else ".png"  # mmseg's ADE20KDataset reads *.jpg images

            def write(ds, out, layout, split):
                return write_folder_dataset(ds, out, layout=layout, split=split, image_ext=ext,
                                            overwrite=args.overwrite)

            ds = open_seg_dataset(args.spec)
        else:
            print(f"Error: {args.spec!r}: expected sample:digitseg/... or sample:depth/...", file=sys.stderr)
            sys.exit(2)
        if args.limit:
            ds = ds.subset(range(min(args.limit, len(ds))))
        out = write(ds, args.out, layout=layout, split=args.split)
    except SvgfeatError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {len(ds)} pairs of {args.spec} to {out} ({layout} layout, split {args.split})")


if __name__ == "__main__":
    main()
