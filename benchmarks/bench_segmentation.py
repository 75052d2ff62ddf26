"""Segmentation training cost: native linear head online vs from a dense-feature cache, and the mmseg
EncoderDecoder with the frozen SVG backbone vs the same model with the backbone unfrozen.

All paths use the same encoder (golden full-size DINOv3-S+/16 + residual ViT with random weights when
../shared/golden is present, else test_tiny), the same images (real scikit-image photos with 4-class masks
from grey levels) and the same crop size / batch. Step times are medians over S steps after one warm-up step.

"Online vs cached" changes ONE factor per row (all rows read the same in-memory images / RAM-loaded features):
  A. online, mmseg ADE20K augmentation (random scale 0.5-2, crop, flip), loss at full resolution;
  B. online, no augmentation, on the images pre-squashed to crop x crop (the pixels the cache holds), full-res loss
     -> A/B = the cost of augmentation;
  C. cached features of those same squashed images, mask_stride 1 (full-res loss, like B)
     -> B/C = the cost of running the encoder (the cache's saving at equal work);
  D. cached, mask_stride 4 (the default: loss at 1/4 resolution) -> C/D = the cost of the full-res loss.
mmseg vs native: the mmseg model (frozen SVGBackbone + BNHead) is fed each step from the same dataset as row B
(the squashed photos, decoded from the same in-memory arrays, no augmentation), so "mmseg / native" compares the
same work from the same storage.

    python benchmarks/bench_segmentation.py [--crop 256] [--batch 2] [--steps 5] [--threads 1] [--no-mmseg]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
WEIGHTS = dict(dinov3=GOLDEN / "dinov3_vits16plus_random.pth", svg=GOLDEN / "svg_ae_shared.ckpt",
               svg_config=GOLDEN / "svg_ae_shared.yaml")


def encoder_kwargs():
    if all(p.exists() for p in WEIGHTS.values()):
        return {k: str(v) for k, v in WEIGHTS.items()}, "golden full-size SVG (DINOv3-S+/16 + residual, 392 ch)"
    return {"model": "test_tiny"}, "test_tiny (golden weights absent)"


def photo_pairs(n: int = 8):
    """Real photos (~0.6 MP) and 4-class masks (grey-level quartiles)."""
    import skimage.data
    from PIL import Image

    names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]
    images, masks = [], []
    for i in range(n):
        a = Image.fromarray(getattr(skimage.data, names[i % len(names)])()).convert("RGB").resize((400, 300))
        g = np.asarray(a.convert("L"))
        images.append(np.asarray(a))
        masks.append(np.digitize(g, np.quantile(g, [0.25, 0.5, 0.75])).astype(np.int64))
    return images, masks


def median_step(times) -> float:
    return float(np.median(times[1:]))  # the first step pays for warm-up / worker start


def squashed(ds, crop):
    """The dataset resized to crop x crop (bicubic images, nearest masks): what the 'resize' cache holds."""
    from PIL import Image

    from svgfeat.data.segmentation import ArraySegDataset

    imgs = [np.asarray(ds.load(i).resize((crop, crop), Image.BICUBIC)) for i in range(len(ds))]
    masks = [np.asarray(Image.fromarray(ds.load_mask(i).astype(np.int32)).resize((crop, crop), Image.NEAREST))
             .astype(np.int64) for i in range(len(ds))]
    return ArraySegDataset(imgs, masks, num_classes=4)


def bench_native(enc, ds, crop, batch, steps, tmp):
    from svgfeat.extraction import extract
    from svgfeat.heads.segmentation import LinearSegHead

    kw = dict(batch_size=batch, warmup_iters=0, crop_size=crop, lr=1e-3)
    sq = squashed(ds, crop)
    out = {}
    out["A"] = median_step(LinearSegHead(enc, max_iters=steps + 1, **kw).fit(ds).step_times_)
    out["B"] = median_step(LinearSegHead(enc, max_iters=steps + 1, scale_range=(1.0, 1.0), flip=False,
                                         base_size=crop, **kw).fit(sq).step_times_)
    with Timer() as t_ext:
        cache = extract(sq, Path(tmp) / "cache", encoder=enc, groups=("dino", "latent"), preset="resize", size=crop,
                        batch_size=batch, progress=False)
    out["C"] = median_step(LinearSegHead(max_iters=10 * steps + 1, mask_stride=1, **kw).fit(cache, sq).step_times_)
    out["D"] = median_step(LinearSegHead(max_iters=10 * steps + 1, mask_stride=4, **kw).fit(cache, sq).step_times_)
    return out, t_ext.seconds, sq


def bench_mmseg(enc_kw, crop, batch, steps, sq):
    import torch
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from svgfeat.integrations.mmseg import build_segmentor, config_path, match_head_channels

    def make(frozen: bool):
        cfg = Config.fromfile(config_path("linear"))
        cfg.model.backbone.update({**dict(dinov3=None, svg=None, svg_config=None, model=None), **enc_kw,
                                   "frozen": frozen})
        cfg.model.decode_head.num_classes = 4
        cfg.model.data_preprocessor.size = (crop, crop)
        match_head_channels(cfg)
        return build_segmentor(cfg).train()

    def load_batch(step):
        """The same storage as native row B: decode batch ``step`` from the squashed in-memory dataset."""
        imgs, samples = [], []
        for j in range(batch):
            img, mask = sq.load_pair((step * batch + j) % len(sq))
            imgs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous())
            s = SegDataSample()
            s.gt_sem_seg = PixelData(data=torch.from_numpy(mask[None].astype(np.int64)))
            s.set_metainfo(dict(img_shape=(crop, crop), ori_shape=(crop, crop), pad_shape=(crop, crop)))
            samples.append(s)
        return imgs, samples

    def run(model, n):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for step in range(n):
            tic = time.perf_counter()
            imgs, samples = load_batch(step)
            data = model.data_preprocessor(dict(inputs=imgs, data_samples=samples), True)
            losses = model(**data, mode="loss")
            loss = sum(v for k, v in losses.items() if "loss" in k)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - tic)
        return times

    out = {}
    for frozen in (True, False):
        model = make(frozen)
        out[frozen] = median_step(run(model, steps + 1))
        del model
    return out[True], out[False]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-mmseg", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: reproducible on a shared 2-core box; 0: torch's default)")
    args = ap.parse_args(argv)
    print("command: python benchmarks/bench_segmentation.py " + " ".join(sys.argv[1:] if argv is None else argv))

    import torch

    import svgfeat

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from svgfeat.data.segmentation import ArraySegDataset

    t0 = time.time()
    enc_kw, enc_desc = encoder_kwargs()
    enc = svgfeat.load_encoder(**enc_kw)
    images, masks = photo_pairs()
    ds = ArraySegDataset(images, masks, num_classes=4)
    print(f"encoder: {enc_desc}; {len(ds)} photos 400x300, crop {args.crop}, batch {args.batch}, {args.steps} steps, "
          f"{torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        r, ext, sq = bench_native(enc, ds, args.crop, args.batch, args.steps, tmp)
    print(f"A native head, online, augmented, full-res loss:        {1000 * r['A']:8.1f} ms/step")
    print(f"B native head, online, no augmentation, full-res loss:  {1000 * r['B']:8.1f} ms/step   A/B = "
          f"{r['A'] / r['B']:.2f}x (augmentation)")
    print(f"C native head, cached features, full-res loss:          {1000 * r['C']:8.1f} ms/step   B/C = "
          f"{r['B'] / r['C']:.1f}x (encoder forward: the cache's saving at equal work)")
    print(f"D native head, cached features, loss at stride 4:       {1000 * r['D']:8.1f} ms/step   C/D = "
          f"{r['C'] / r['D']:.2f}x (loss resolution)")
    print(f"  one-time extraction of {len(ds)} images: {ext:.1f} s")
    online = r["B"]
    if not args.no_mmseg:
        try:
            frozen, unfrozen = bench_mmseg(enc_kw, args.crop, args.batch, args.steps, sq)
        except ImportError as e:
            print(f"mmseg part skipped ({e})")
        else:
            print(f"mmseg EncoderDecoder + BNHead, frozen backbone:      {1000 * frozen:8.1f} ms/iter")
            print(f"mmseg EncoderDecoder + BNHead, unfrozen backbone:    {1000 * unfrozen:8.1f} ms/iter")
            print(f"  ratio unfrozen / frozen: {unfrozen / frozen:.1f}x;  mmseg frozen / native online (row B, same "
                  f"data, same storage, no augmentation): {frozen / online:.2f}x")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
