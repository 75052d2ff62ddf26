"""`search` / `serve` take the encoder from the index's source-cache provenance: the weight files it recorded
(when they still hold the recorded sha256), options given win, and a missing file is named with the exact
option to add. Full-size encoder with the golden weights (copied, so one can go missing)."""

import json
import shutil

import faiss  # noqa: F401  (a hard dependency)
import pytest
from _retrieval_helpers import photo_folder

import svgfeat
from svgfeat.cli import main
from svgfeat.errors import ConfigError


@pytest.fixture(scope="module")
def built(tmp_path_factory, golden):
    d = tmp_path_factory.mktemp("prov")
    w = {role: d / golden(name).name for role, name in
         (("dinov3", "dinov3_vits16plus_random.pth"), ("svg", "svg_ae_shared.ckpt"), ("svg_config", "svg_ae_shared.yaml"))}
    for p in w.values():
        shutil.copy(golden(p.name), p)
    cache = svgfeat.extract(photo_folder() / "imgs", d / "cache", **{k: str(v) for k, v in w.items()}, size=32,
                            groups=["cls", "pooled"], progress=False)
    with pytest.raises(SystemExit) as e:
        main(["index", "build", str(cache.root), "--group", "cls", "-o", str(d / "g.faiss")])
    assert e.value.code == 0
    return cache, d / "g.faiss", w


def search(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(["search", *[str(a) for a in args]])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def lines(err):
    return [ln for ln in err.strip().splitlines() if "%|" not in ln]


def test_search_without_options_rebuilds_the_encoder_from_the_cache_provenance(built, capsys):
    cache, index, w = built
    img = photo_folder() / "imgs" / cache.paths[2]
    code, out, err = search(capsys, index, img, "-k", "2", "--json")
    assert code == 0, err
    got = json.loads(out)[0]["results"]
    assert got[0]["id"] == 2 and got[0]["score"] > 0.999
    # --dinov3 alone on a cache extracted with --svg: the SVG checkpoint and config come from the provenance
    code, out2, err = search(capsys, index, img, "-k", "2", "--json", "--dinov3", w["dinov3"])
    assert code == 0, err
    assert json.loads(out2) == json.loads(out)


def test_a_missing_weight_file_names_the_option_to_add(built, capsys, tmp_path):
    cache, index, w = built
    img = photo_folder() / "imgs" / cache.paths[0]
    moved = tmp_path / "elsewhere.ckpt"
    shutil.move(w["svg"], moved)
    try:
        code, _, err = search(capsys, index, img, "--dinov3", w["dinov3"])
        assert code == 2 and len(lines(err)) == 1 and "Traceback" not in err, err
        assert "add --svg PATH" in err and "SVG checkpoint" in err and "--dinov3" not in err.split("add")[1], err
        from svgfeat.heads.patch_retrieval import load_any
        from svgfeat.serve.engine import SearchService, index_encoder

        idx = load_any(index)
        with pytest.raises(ConfigError, match="add --svg PATH"):
            index_encoder(idx.provenance_)  # what `svgfeat serve` calls: uploads off, the reason printed
        with pytest.raises(ConfigError, match="add --svg PATH"):
            SearchService(idx, None).by_image(img)
        code, out, err = search(capsys, index, img, "--json", "--dinov3", w["dinov3"], "--svg", moved)
        assert code == 0 and json.loads(out)[0]["results"][0]["id"] == 0, err  # given: used
    finally:
        shutil.move(moved, w["svg"])


def test_a_replaced_weight_file_is_not_used(built, capsys, tmp_path):
    cache, index, w = built
    img = photo_folder() / "imgs" / cache.paths[0]
    keep = tmp_path / "keep.pth"
    shutil.copy(w["dinov3"], keep)
    try:
        data = w["dinov3"].read_bytes()
        w["dinov3"].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same name and size, other contents
        code, _, err = search(capsys, index, img)
        assert code == 2 and "add --dinov3 PATH" in err and "DINOv3 weights" in err, err
    finally:
        shutil.copy(keep, w["dinov3"])
