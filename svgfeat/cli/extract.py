"""`svgfeat extract DATA -o CACHE ...`: dataset -> encoder -> feature cache."""

import sys

import click

from ._common import encoder_options, precision_option, printable
from ._types import LIMIT, POSITIVE, SIZE, WORKERS, NonEmptyPath, NonEmptyText


@click.command()
@click.argument("data", type=NonEmptyText())
@click.option("-o", "--out", required=True, type=NonEmptyPath(file_okay=False), help="Cache directory.")
@encoder_options
@click.option("--groups", default="latent,cls,pooled", show_default=True,
              help="Comma-separated groups: dino,residual,latent,cls,registers,pooled,residual_raw,cls_l<i>,"
                   "pooled_l<i>,dino_l<i>.")
@click.option("--size", default=256, show_default=True, type=SIZE)
@click.option("--preset", default="svg", show_default=True,
              type=click.Choice(["svg", "center-crop", "resize", "none", "rrc"]),
              help="svg: ADM centre crop; center-crop: resize + centre crop (crop_pct 0.875); resize: squash to "
                   "the size; none: keep each image's size (first image's size for all); rrc: seeded "
                   "random-resized crops (one per view, for --views > 1).")
@click.option("--dtype", default="fp16", show_default=True, type=click.Choice(["fp16", "bf16", "fp32"]))
@click.option("--batch-size", default=64, show_default=True, type=POSITIVE)
@click.option("--shard-size", default=1024, show_default=True, type=POSITIVE, help="Images per shard.")
@click.option("--workers", default=0, show_default=True, type=WORKERS,
              help="Decoding worker processes. On CPU the encoder then gets the remaining cores: use 0 when the "
                   "model dominates (full-size encoder on CPU), >0 on GPU or with light models.")
@click.option("--limit", default=None, type=LIMIT, help="Only the first N items.")
@click.option("--views", default=1, show_default=True, type=POSITIVE, help="Views per image (1 plain, 2 +flip, >2 +crops).")
@click.option("--labels", "label_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Label file for a flat folder (filename label per line).")
@click.option("--format", "fmt", default=None, type=click.Choice(["folder", "filelist", "wds", "parquet", "hf"]),
              help="How to read DATA [default: detected from what the path holds].")
@click.option("--hash-sources", is_flag=True,
              help="Also record and check a content hash of every image (default: size + mtime). Changed images "
                   "are re-extracted on the next run.")
@click.option("--fast-jpeg", is_flag=True, help="Decode JPEGs at reduced DCT scale (faster, approximate).")
@click.option("--gpu-decode", is_flag=True,
              help="Decode JPEG batches on --device (nvJPEG on CUDA) with the preset's exact geometry; workers only "
                   "read bytes.")
@precision_option(("fp32", "bf16"), "Encoder numerics (recorded; a cache is never resumed in another precision). "
                  "bf16: autocast.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the encoder forward (faster on GPUs after a warm-up; fp32 equal to eager "
                   "within 1e-5; recorded in the manifest).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="NHWC input layout for the patch embedding (default: on CUDA only; recorded).")
@click.option("--prefetch", default=4, show_default=True, type=POSITIVE,
              help="Batches each decoding worker prepares ahead (recorded).")
@click.option("--overwrite", is_flag=True,
              help="Replace a cache that holds a different extraction (removes only the files svgfeat wrote).")
@click.option("--allow-inside-input", is_flag=True, help="Allow -o equal to or inside the input folder.")
def extract(data, out, dinov3, svg, svg_config, model, alignment, device, groups, size, preset, dtype,
            batch_size, shard_size, workers, limit, views, label_file, fmt, hash_sources, fast_jpeg, gpu_decode,
            precision, compile_, channels_last, prefetch, overwrite, allow_inside_input):
    """Extract SVG features of DATA into the cache OUT (resumable). DATA is one of:

    \b
      IMAGES/                      class folders (train/<wnid>/*.JPEG) or a folder of images
      list.txt                     a file list ('path [label]' per line)
      R/train-{0000..1023}.tar     WebDataset tar shards (also one .tar, a glob, or a folder of .tar);
                                   timm/imagenet-1k-wds: KEY.jpg + KEY.cls
      'R/data/train-*.parquet'     parquet files (ILSVRC/imagenet-1k: image {bytes, path} + label)
      SAVED/                       a datasets.save_to_disk folder (arrow files + state.json)
      hf://datasets/ORG/NAME[@REV][/SPLIT]   a dataset in the local Hugging Face cache (offline)
      sample:digits/train          embedded samples (sample:digits/val, sample:photos)

    Changed images are noticed on every re-run (size + mtime; --hash-sources adds content hashes) and their
    shards re-extracted; a source whose item list changed is refused, naming the files that differ."""
    from ..data import open_dataset
    from ..extraction import extract as run

    ds = open_dataset(data, labels=label_file, format=fmt)
    cache = run(ds, out, dinov3=dinov3, svg=svg, svg_config=svg_config, model=model, groups=groups, size=size,
                preset=preset, dtype=dtype, alignment=alignment, batch_size=batch_size, shard_size=shard_size,
                workers=workers, device=device, limit=limit, views=views, overwrite=overwrite,
                fast_jpeg=fast_jpeg, gpu_decode=gpu_decode, precision=precision,
                allow_inside_input=allow_inside_input, compile=compile_, channels_last=channels_last,
                prefetch=prefetch, hash_sources=hash_sources)
    fails = cache.failures
    click.echo(f"cache {cache.root}: {len(cache)} rows, groups {', '.join(sorted(cache.groups))}")
    if fails:
        reasons = {}
        for _, r in fails:
            reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
        click.echo(f"{len(fails)} file(s) failed: " + ", ".join(f"{printable(k)} x{v}" for k, v in sorted(reasons.items())),
                   err=True)
        for p, r in fails[:20]:
            click.echo(f"  {printable(p)}: {printable(r)}", err=True)
        sys.exit(1)
