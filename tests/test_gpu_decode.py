"""The device JPEG decoder on CPU: banded resampling equals Pillow bit for bit, batches of mixed sizes,
bands computed once per device, the manifest's resample tag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import svgfeat
from svgfeat.data import gpu_decode as G
from svgfeat.data.transforms import Transform


def _pil(arr: np.ndarray, wh, name):
    return np.asarray(Image.fromarray(arr).resize(wh, resample=Image.BOX if name == "box" else Image.BICUBIC))


@pytest.mark.parametrize("name", ["box", "bicubic"])
def test_banded_resize_equals_pillow_bit_for_bit(name):
    """Down (x1.3 .. x9), up (x2.6), 1-pixel targets, sources narrower than the filter window."""
    rng = np.random.default_rng(0)
    cases = [((97, 61), (33, 47)), ((500, 375), (341, 256)), ((257, 255), (128, 127)), ((5, 3), (13, 8)),
             ((3, 2), (1, 1)), ((40, 30), (40, 7)), ((640, 20), (71, 20)), ((7, 900), (3, 100)),
             ((295, 647), (62, 135)), ((386, 469), (445, 61)), ((140, 893), (120, 767))]  # Pillow 13: V first
    for (w, h), (W, H) in cases:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2, : w // 2] = 255  # hard edges: bicubic overshoot must clip like Pillow's clip8
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        got = G.pil_resize(x, (W, H), name)[0].permute(1, 2, 0).numpy()
        ref = _pil(arr, (W, H), name)
        assert got.shape == ref.shape and np.array_equal(got, ref), ((w, h), (W, H), np.abs(got - ref).max())


def test_bands_are_banded_and_computed_once_per_device():
    G._DEVICE_BANDS.clear()
    idx, w = G.device_band(4000, 256, "bicubic", "cpu")
    assert idx.shape == w.shape and w.shape[0] == 256 and w.shape[1] == 2 * int(np.ceil(2 * 4000 / 256)) + 1
    assert w.dtype == torch.int32 and int(idx.min()) >= 0 and int(idx.max()) < 4000
    assert (w.sum(1) - (1 << G.PRECISION_BITS)).abs().max() <= w.shape[1]  # rows sum to 1.0 in fixed point
    again = G.device_band(4000, 256, "bicubic", torch.device("cpu"))
    assert again[0] is idx and again[1] is w  # cached: not recomputed, not re-uploaded


def test_mixed_size_batch_equals_pil_per_image(tmp_path, photos):
    """One decode call over images of 4 sizes (one needs three BOX halvings) = the PIL pipeline per image."""
    files = []
    sizes = [(600, 520), (131, 97), (131, 97), (512, 512), (200, 90)]
    for k, (w, h) in enumerate(sizes):
        p = tmp_path / f"{k}.jpg"
        Image.fromarray(photos[k % len(photos)]).resize((w, h)).save(p, quality=90)
        files.append(p)
    from svgfeat.data.decode import load_image

    for preset in ("svg", "center-crop", "resize"):
        t = Transform(preset, 64)
        x, failed = G.decode_transform([G.read_bytes(f) for f in files], t, "cpu")
        ref = torch.stack([t(load_image(f)) for f in files])
        assert failed == {} and torch.equal(x, ref), preset


def test_bad_jpeg_in_a_batch_is_a_failure_not_a_wrong_row(tmp_path, photos):
    good = tmp_path / "a.jpg"
    Image.fromarray(photos[0]).save(good)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 not really a jpeg"), dtype=torch.uint8)
    x, failed = G.decode_transform([G.read_bytes(good), bad, G.read_bytes(good)], Transform("svg", 32), "cpu")
    assert x.shape == (2, 3, 32, 32) and list(failed) == [1] and failed[1].startswith("truncated")
    assert torch.equal(x[0], x[1])


def test_manifest_records_the_banded_resample_tag(tmp_path, photos):
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(2):
        Image.fromarray(photos[k]).save(d / f"{k}.jpg")
    c = svgfeat.extract(d, tmp_path / "c", model="test_tiny", size=32, gpu_decode=True, groups=["cls"],
                        progress=False)
    assert c.transform["decoder"] == "device" and c.transform["resample"] == G.RESAMPLE_TAG
    assert G.RESAMPLE_TAG != "pil-matrix-v1"  # the v1 caches (dense float64 matrices) are not resumed by v2
