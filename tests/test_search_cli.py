"""`svgfeat index build/info` and `svgfeat search`: real images return themselves first; HTML renders."""

import json
import re

import pytest
from _retrieval_helpers import chromium, photo_folder, run_chromium, tiny_cache
from click.testing import CliRunner

from conftest import require_extra
from svgfeat.cli import cli, main

faiss = require_extra("faiss")  # the [faiss] extra: skipped without it locally, a failure under CI=true


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tiny_cache("test_tiny")
    d = tmp_path_factory.mktemp("idx")
    r = run("index", "build", cache.root, "-o", d / "g.faiss")
    assert r.exit_code == 0, r.output
    assert "factory:   Flat" in r.output and "recall@10: 1.0000" in r.output
    r = run("index", "build", cache.root, "-o", d / "p.faiss", "--patch", "--stride", "1")
    assert r.exit_code == 0, r.output
    return cache, d


def test_search_real_image_returns_itself_first(built):
    cache, d = built
    imgs = photo_folder() / "imgs"
    queries = [imgs / cache.paths[i] for i in (0, 3, 6)]
    r = run("search", d / "g.faiss", *queries, "-k", "3", "--json", "--model", "test_tiny")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [o["results"][0]["id"] for o in out] == [0, 3, 6]
    assert [o["results"][0]["path"] for o in out] == [cache.paths[i] for i in (0, 3, 6)]
    assert all(o["results"][0]["score"] > 0.999 for o in out) and all(len(o["results"]) == 3 for o in out)
    # a cache row as query, plain-text output
    r = run("search", d / "g.faiss", f"{cache.root}:2", "-k", "2")
    assert r.exit_code == 0, r.output
    assert re.search(r"1\. \+1\.0000\s+id 2 ", r.output), r.output


def test_provenance_and_usage_errors(built, capsys):
    cache, d = built
    img = photo_folder() / "imgs" / cache.paths[1]
    code, out, err = run_main(capsys, "search", d / "g.faiss", img, "--model", "test_tiny_dino")
    assert code == 2 and "Error: encoder provenance does not match" in err and "test_tiny_dino" in err
    code, out, err = run_main(capsys, "search", d / "g.faiss", img, "--json")  # the encoder from the provenance
    assert code == 0 and json.loads(out)[0]["results"][0]["id"] == 1, err
    other = tiny_cache("test_tiny_dino")
    code, out, err = run_main(capsys, "search", d / "g.faiss", f"{other.root}:0")
    assert code == 2 and "model: index has 'test_tiny'" in err
    code, out, err = run_main(capsys, "search", d / "g.faiss", "no/such/thing.png")
    assert code == 2 and "neither an image file nor CACHE:ROW" in err
    code, out, err = run_main(capsys, "index", "build", cache.root, "-o", d / "x.faiss", "--group", "latent")
    assert code == 2 and "patch grid" in err
    code, out, err = run_main(capsys, "index", "build", cache.root, "-o", d / "x.faiss", "--auto",
                              "--max-memory", "lots")
    assert code == 2 and "memory budget" in err


def test_index_info_and_auto(built):
    cache, d = built
    r = run("index", "info", d / "g.faiss")
    assert r.exit_code == 0 and "encoder:   test_tiny" in r.output and f"vectors:   {len(cache)} x 64" in r.output
    r = run("index", "info", d / "p.faiss", "--json")
    info = json.loads(r.output)
    assert info["kind"] == "patch" and info["patch"]["grid"] == [4, 4] and info["ntotal"] == len(cache) * 16
    assert "meta" not in info
    r = run("index", "build", cache.root, "-o", d / "a.faiss", "--auto", "--max-memory", "1GB", "--group", "cls")
    assert r.exit_code == 0 and "factory:   Flat  (n=8 <= 50000" in r.output, r.output


def test_patch_search_cli_region(built):
    cache, d = built
    img = photo_folder() / "imgs" / cache.paths[4]
    r = run("search", d / "p.faiss", img, "--region", "0:2,1:3", "-k", "2", "--json", "--model", "test_tiny")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)[0]["results"]
    assert res[0]["id"] == 4 and sorted(map(tuple, res[0]["patches"][:4])) == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_html_report_embeds_thumbnails_and_renders(built, tmp_path):
    cache, d = built
    img = photo_folder() / "imgs" / cache.paths[2]
    out = tmp_path / "r.html"
    r = run("search", d / "g.faiss", img, f"{cache.root}:5", "-k", "4", "--html", out, "--model", "test_tiny")
    assert r.exit_code == 0, r.output
    text = out.read_text()
    thumbs = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(thumbs) == 2 * (1 + 4)  # each query + its 4 neighbours
    import base64

    assert all(base64.b64decode(t)[:3] == b"\xff\xd8\xff" for t in thumbs)  # JPEG magic
    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): HTML rendering not checked")
    shot = tmp_path / "shot.png"
    res = run_chromium(out.as_uri(), f"--screenshot={shot}", "--window-size=1000,900")
    assert shot.exists(), res.stderr[-2000:]
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape == (900, 1000, 3) and len(np.unique(px.reshape(-1, 3), axis=0)) > 500  # thumbnails drew
    dom = run_chromium(out.as_uri(), "--dump-dom").stdout
    assert dom.count("<figure") == 10 and "query: " in dom


def test_names_with_newlines_cannot_forge_search_lines(tmp_path, capsys):
    """Printed results escape file names: an embedded newline or carriage return stays on its line."""
    import shutil

    import svgfeat

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    src = sorted((photo_folder() / "imgs").iterdir())[:3]
    forged = "z\n    2. +1.0000  id 9       forged.png\r"
    shutil.copy(src[0], imgs / f"{forged}.png")
    for p in src[1:]:
        shutil.copy(p, imgs / p.name)
    cache = svgfeat.extract(imgs, tmp_path / "c", model="test_tiny", size=64, groups=["pooled"], progress=False)
    code, out, err = run_main(capsys, "index", "build", cache.root, "-o", tmp_path / "g.faiss")
    assert code == 0, err
    row = cache.paths.index(f"{forged}.png")
    code, out, err = run_main(capsys, "search", tmp_path / "g.faiss", f"{cache.root}:{row}", "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("query: ") and not any("forged" in ln for ln in lines[2:])
    assert "\\n    2. +1.0000  id 9       forged.png\\r" in lines[1], lines
