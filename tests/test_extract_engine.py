"""Extraction engine and the cache as a unit with an owner (issues I and J): one loader per run, background
writer, precision in the request, lock, owned-files overwrite, input/output containment, re-hashing resume,
argument validation, device JPEG decoding that follows the preset."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import svgfeat
from svgfeat.errors import CacheError, ConfigError

KW = dict(model="test_tiny", size=64, limit=24, shard_size=8, batch_size=4, progress=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "svgfeat", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("jpegs")
    for i, a in enumerate(photos):
        Image.fromarray(a).save(d / f"p{i}.jpg", quality=90)
    return d


# ------------------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("kw, word", [(dict(limit=-5), "limit -5"), (dict(limit=0), "limit 0"),
                                      (dict(workers=-1), "workers -1"), (dict(batch_size=0), "batch-size 0"),
                                      (dict(shard_size=0), "shard-size 0"), (dict(precision="fp8"), "precision"),
                                      (dict(size=100), "multiple of 16")])
def test_bad_numbers_are_config_errors(tmp_path, kw, word):
    with pytest.raises(ConfigError, match=word):
        svgfeat.extract("sample:digits/val", tmp_path / "c", **{**KW, **kw})
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("flag, value", [("--limit", "-5"), ("--workers", "-1")])
def test_cli_bad_numbers_one_line_exit_2(tmp_path, flag, value):
    r = _cli("extract", "sample:digits/val", "-o", str(tmp_path / "c"), "--model", "test_tiny", "--size", "64",
             flag, value)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and value in lines[0], r.stderr


# ------------------------------------------------------------------------------------- output folder
def test_output_inside_input_is_refused_unless_allowed(jpegs, tmp_path):
    kw = dict(model="test_tiny", size=64, progress=False, groups=["cls"])
    for out in (jpegs, jpegs / "cache", jpegs / "a" / "b"):
        with pytest.raises(ConfigError, match="input folder"):
            svgfeat.extract(jpegs, out, **kw)
    assert sorted(p.name for p in jpegs.iterdir()) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    r = _cli("extract", str(jpegs), "-o", str(jpegs), "--model", "test_tiny", "--size", "64", "--overwrite")
    assert r.returncode == 2 and "--allow-inside-input" in r.stderr and "Traceback" not in r.stderr
    c = svgfeat.extract(jpegs, jpegs / "cache", allow_inside_input=True, **kw)
    assert len(c) == 4


def test_overwrite_removes_only_what_svgfeat_wrote(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "keep.bin").write_bytes(b"x")
    (out / "shard-notmine.safetensors").write_bytes(b"y")
    svgfeat.extract("sample:digits/val", out, **KW)
    svgfeat.extract("sample:digits/val", out, **{**KW, "size": 80, "shard_size": 12}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "keep.bin").exists()
    assert (out / "shard-notmine.safetensors").exists()
    c = svgfeat.open_cache(out)
    assert c.transform["size"] == 80 and len(c.manifest["shards"]) == 2
    assert not (out / "shard-00002.safetensors").exists()  # the old 3rd shard went with the old cache


def test_second_writer_is_refused_while_the_lock_is_held(tmp_path):
    from svgfeat.cache.lock import cache_lock

    out = tmp_path / "c"
    with cache_lock(out, {"who": "test"}):
        for kw in (KW, {**KW, "size": 80}):  # same request or another one: refused, nothing written
            with pytest.raises(CacheError, match="being written"):
                svgfeat.extract("sample:digits/val", out, **kw)
        assert not (out / "manifest.json").exists()
    assert len(svgfeat.extract("sample:digits/val", out, **KW)) == 24


def test_two_concurrent_runs_with_different_sizes_never_both_succeed(tmp_path):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "svgfeat", "extract", "sample:digits/train", "-o", str(out), "--model",
           "test_tiny", "--limit", "20", "--shard-size", "10", "--batch-size", "10"]
    procs = [subprocess.Popen(cmd + ["--size", s], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in ("64", "80")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = [rc for rc, _ in results]
    assert codes.count(0) <= 1 and all(rc in (0, 2) for rc in codes), results
    for rc, err in results:
        if rc == 2:
            assert "being written" in err or "different extraction" in err, err
    if 0 in codes:  # what is there is one consistent cache
        c = svgfeat.open_cache(out)
        size = c.transform["size"]
        from svgfeat.extraction import verify_cache

        assert c.read("latent").shape[-1] == size // 16 and verify_cache(out) == []
    # and a sequential second run with another size is refused, naming the field
    with pytest.raises(CacheError, match="transform.size"):
        svgfeat.extract("sample:digits/train", out, model="test_tiny", size=96, limit=20, shard_size=10,
                        batch_size=10, progress=False)


# ------------------------------------------------------------------------------------- resume
def _interrupt(out: Path):
    """Make a complete cache look like a killed run (manifest written, complete False)."""
    m = json.loads((out / "manifest.json").read_text())
    for k in ("shards", "failures", "num_rows", "finished"):
        m.pop(k, None)
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))


def test_resume_rehashes_and_redoes_damaged_shards(tmp_path):
    ref = svgfeat.extract("sample:digits/val", tmp_path / "ref", **KW)
    out = tmp_path / "c"
    svgfeat.extract("sample:digits/val", out, **KW)
    _interrupt(out)
    f1 = out / "shard-00001.safetensors"
    b = bytearray(f1.read_bytes())
    b[-3] ^= 0xFF  # same size, one flipped byte in the data
    f1.write_bytes(bytes(b))
    (out / "shard-00002.json").unlink()
    c = svgfeat.extract("sample:digits/val", out, **KW)
    assert [s["sha256"] for s in c.manifest["shards"]] == [s["sha256"] for s in ref.manifest["shards"]]
    for g in ref.groups:
        assert np.array_equal(ref.read(g), c.read(g)), g


def test_rerun_of_a_complete_cache_repairs_a_damaged_shard(tmp_path):
    out = tmp_path / "c"
    ref = svgfeat.extract("sample:digits/val", out, **KW)
    good = {g: ref.read(g) for g in ref.groups}
    f0 = out / "shard-00000.safetensors"
    b = bytearray(f0.read_bytes())
    b[-1] ^= 0x01
    f0.write_bytes(bytes(b))
    c = svgfeat.extract("sample:digits/val", out, **KW)  # rerun (no encoder object: the light path)
    for g, v in good.items():
        assert np.array_equal(c.read(g), v), g


def test_one_loader_for_all_shards_and_writer_errors_propagate(tmp_path, monkeypatch):
    from svgfeat.extraction import engine, writer

    made = []
    real = engine.make_loader
    monkeypatch.setattr(engine, "make_loader", lambda *a, **k: made.append(1) or real(*a, **k))
    c = svgfeat.extract("sample:digits/val", tmp_path / "a", **{**KW, "workers": 1})
    assert len(c.manifest["shards"]) == 3 and made == [1]

    def boom(self, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.ShardJob, "write", boom)
    with pytest.raises(OSError, match="No space left"):
        svgfeat.extract("sample:digits/val", tmp_path / "b", **KW)
    with pytest.raises(CacheError, match="incomplete"):
        svgfeat.open_cache(tmp_path / "b")


# ------------------------------------------------------------------------------------- numerics
def test_precision_is_recorded_and_a_bf16_cache_is_not_resumed_in_fp32(tmp_path):
    out = tmp_path / "c"
    c = svgfeat.extract("sample:digits/val", out, precision="bf16", **KW)
    m = c.manifest
    assert m["precision"] == "bf16" and m["numerics"]["device_type"] == "cpu"
    assert m["numerics"]["torch"] == torch.__version__ and m["numerics"]["timm"]
    assert m["encoder"]["family"] == "svg" and "stage" in m["encoder"]
    fp32 = svgfeat.extract("sample:digits/val", tmp_path / "f", **KW)
    assert fp32.manifest["precision"] == "fp32"  # the default
    assert not np.array_equal(fp32.read("latent"), c.read("latent"))
    _interrupt(out)
    with pytest.raises(CacheError, match=r"precision: cache has 'bf16', requested 'fp32'"):
        svgfeat.extract("sample:digits/val", out, **KW)
    with pytest.raises(CacheError, match="precision"):  # and complete caches are not reused either
        svgfeat.extract("sample:digits/val", tmp_path / "f", precision="bf16", encoder=svgfeat.create_model(
            "test_tiny"), **{k: v for k, v in KW.items() if k != "model"})


def test_bf16_deviation_on_the_golden_model(golden_encoder, photos):
    """Protocol: 4 photos at 224 px, full-size SVG-S+ (golden random weights), CPU, bf16 autocast vs fp32.
    Measured (random golden weights): relative L2 error latent 5.3e-3, cls 1.1e-2; bound 5e-2."""
    from svgfeat.extraction.encode import Encoding

    x = svgfeat.preprocess(photos, size=224)
    enc = golden_encoder.eval()
    a = Encoding(enc, ["latent", "cls"], "fp32", "cpu", "fp32")(x).wait()
    b = Encoding(enc, ["latent", "cls"], "fp32", "cpu", "bf16")(x).wait()
    for g in ("latent", "cls"):
        rel = ((a[g] - b[g]).norm() / a[g].norm()).item()
        assert 0 < rel < 5e-2, (g, rel)


# ------------------------------------------------------------------------------------- device decoding
@pytest.mark.parametrize("preset", ["svg", "center-crop", "resize"])
def test_device_decode_follows_the_preset_exactly_on_cpu(jpegs, preset):
    from svgfeat.data.decode import load_image
    from svgfeat.data.gpu_decode import decode_transform, read_bytes
    from svgfeat.data.transforms import Transform

    files = sorted(jpegs.glob("*.jpg"))
    for size in (64, 112):
        t = Transform(preset, size)
        x, failed = decode_transform([read_bytes(f) for f in files], t, "cpu")
        ref = torch.stack([t(load_image(f)) for f in files])
        assert failed == {} and torch.equal(x, ref), (preset, size, (x - ref).abs().max())


def test_device_decode_leaves_rotated_and_cmyk_jpegs_to_pil(tmp_path, photos):
    from svgfeat.data.gpu_decode import device_decodable, read_bytes

    im = Image.fromarray(photos[1])
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    exif[0x0112] = 1
    im.save(tmp_path / "up.jpg", exif=exif.tobytes())
    im.convert("CMYK").save(tmp_path / "cmyk.jpg")
    im.convert("L").save(tmp_path / "gray.jpg")
    ok = {p.name: device_decodable(read_bytes(p)) for p in tmp_path.glob("*.jpg")}
    assert ok == {"rot.jpg": False, "up.jpg": True, "cmyk.jpg": False, "gray.jpg": True}


def test_preset_none_takes_the_first_image_size_and_refuses_other_sizes(tmp_path, photos):
    """preset 'none' keeps image sizes: the cache holds the first decodable image's size (not a 64x64 guess),
    and an image of another size is a recorded failure, never a wrongly shaped row."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(photos[0][:96, :128]).save(d / "a.png")
    Image.fromarray(photos[1][:96, :128]).save(d / "b.png")
    Image.fromarray(photos[2][:64, :64]).save(d / "c.png")
    c = svgfeat.extract(str(d), tmp_path / "c", model="test_tiny", preset="none", groups=["latent", "cls"],
                        progress=False)
    assert len(c) == 2 and c.groups["latent"]["shape"][1:] == [6, 8]
    assert c.read("latent").shape == (2, c.groups["latent"]["shape"][0], 6, 8)
    assert c.manifest["transform"]["hw"] == [96, 128]
    (fail,) = c.failures
    assert fail[0].endswith("c.png") and fail[1].startswith("size-mismatch: 64x64")
