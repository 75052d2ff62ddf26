"""Pretrained weights through the Hugging Face Hub cache (issue H): the real ``hf_hub_download`` code path on a
locally built cache in the standard layout, offline; results must equal loading the same files by path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _hub_helpers import AE, DINO_REPO, DIT, REV, build_golden_hub, hub_env

import svgfeat
from conftest import golden_path, normalise
from svgfeat.errors import CheckpointError, ConfigError
from svgfeat.hub import HubFile, pretrained_cfg, register_pretrained, resolve

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def hub(tmp_path_factory, golden):
    home = tmp_path_factory.mktemp("hf_home")
    return home, build_golden_hub(home, golden)


@pytest.fixture
def offline_cache(hub, monkeypatch):
    """Point the already-imported huggingface_hub at the local cache, offline (HF_HOME is read at import)."""
    from huggingface_hub import constants

    home, src = hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home, src


@pytest.fixture(scope="module")
def images(golden):
    """2 golden images at 64 px (the full-size architecture accepts any multiple of 16; small = fast)."""
    x = normalise(np.load(golden("dinov3_shared_256.npz"))["images_uint8"][:2])
    return torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def ref(hub):
    home, src = hub
    return svgfeat.load_encoder(dinov3=src["dinov3"], svg=src["svg"], svg_config=src["svg_config"])


def test_load_encoder_pretrained_subprocess_equals_by_path(hub, images, tmp_path):
    """The issue's check, as a user runs it: HF_HOME + HF_HUB_OFFLINE=1 set before anything imports huggingface_hub."""
    home, src = hub
    torch.save(images, tmp_path / "x.pt")
    code = f"""
import json, torch, svgfeat
x = torch.load({str(tmp_path / 'x.pt')!r})
a = svgfeat.load_encoder(pretrained=True, device="cpu")
b = svgfeat.load_encoder(dinov3={str(src['dinov3'])!r}, svg={str(src['svg'])!r}, svg_config={str(src['svg_config'])!r})
fa, fb = a.encode(x), b.encode(x)
print(json.dumps({{"latent": float((fa.latent - fb.latent).abs().max()), "cls": float((fa.cls - fb.cls).abs().max()),
    "dec": float((a.decode(fa.latent) - b.decode(fb.latent)).abs().max()), "prov": a.provenance,
    "shape": list(fa.latent.shape)}}))
"""
    r = subprocess.run([sys.executable, "-c", code], env=hub_env(home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2, 392, 4, 4]
    assert out["latent"] == 0 and out["cls"] == 0 and out["dec"] == 0
    p = out["prov"]
    assert p["dinov3"]["repo"] == DINO_REPO and p["dinov3"]["revision"] == REV[DINO_REPO]
    assert p["svg"]["repo"] == "howlin/SVG" and p["svg"]["filename"] == AE + ".ckpt"
    assert p["svg"]["revision"] == REV["howlin/SVG"] and len(p["svg"]["sha256"]) == 64
    from svgfeat.checkpoints import sha256_file

    assert p["svg"]["sha256"] == sha256_file(src["svg"]) and p["dinov3"]["sha256"] == sha256_file(src["dinov3"])


def test_create_model_and_load_dit_pretrained(offline_cache, images, ref):
    home, src = offline_cache
    enc = svgfeat.create_model("svg_vits16plus", pretrained=True)
    assert torch.equal(enc.encode(images[:1]).latent, ref.encode(images[:1]).latent)
    # DINOv3 alone
    dino = svgfeat.create_model("dinov3_vits16plus", pretrained=True)
    assert dino.residual is None and torch.equal(dino.encode(images[:1]).dino, ref.encode(images[:1]).dino)
    # DiT: same weights and outputs as by path, config from the (optional) YAML
    dit = svgfeat.load_dit("svg_dit_xl", pretrained=True)
    dref = svgfeat.load_dit(src["dit"], config=src["dit_config"])
    assert dit.provenance["repo"] == "howlin/SVG" and dit.provenance["filename"] == DIT
    assert dit.provenance["revision"] == REV["howlin/SVG"] and dit.provenance["sha256"] == dref.provenance["sha256"]
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(2, 256, 392, generator=g), torch.rand(2, generator=g), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.equal(dit(x, t, y), dref(x, t, y))
    assert svgfeat.create_model("svg_dit_xl", pretrained=True).config == dref.config
    # latent statistics
    if "stats" in src:
        from svgfeat.hub import fetch_pretrained

        p = fetch_pretrained("svg_dit_xl", "stats")
        assert Path(p).resolve() == Path(src["stats"]).resolve()


def test_optional_yaml_missing_infers_config(tmp_path, golden, monkeypatch, images):
    """No YAML in the repo: the architecture is inferred from the weights, exactly as by path without YAML."""
    from huggingface_hub import constants

    src = build_golden_hub(tmp_path, golden, yaml=False, dit=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    enc = svgfeat.load_encoder(pretrained=True)
    ref = svgfeat.load_encoder(dinov3=src["dinov3"], svg=src["svg"])
    assert "svg_config" not in enc.provenance
    assert enc.decoder.config == ref.decoder.config
    assert torch.equal(enc.encode(images[:1]).latent, ref.encode(images[:1]).latent)


def test_overrides_overlay_spec_and_env(offline_cache, monkeypatch, images, ref):
    home, src = offline_cache
    # explicit file wins over the registered one; a local path in the overlay is used as is
    a = svgfeat.load_encoder(pretrained=True, pretrained_cfg_overlay={"dinov3": str(golden_meta(src))})
    assert a.provenance["dinov3"]["path"].endswith("dinov3_vits16plus_random.pth")
    assert "repo" not in a.provenance["dinov3"] and a.provenance["svg"]["repo"] == "howlin/SVG"
    assert torch.equal(a.encode(images[:1]).latent, ref.encode(images[:1]).latent)
    # hf:// spec with a revision
    b = svgfeat.load_encoder(dinov3=f"hf://{DINO_REPO}/model.safetensors@{REV[DINO_REPO]}")
    assert b.provenance["dinov3"]["revision"] == REV[DINO_REPO] and b.residual is None
    # environment override of one role
    monkeypatch.setenv("SVGFEAT_PRETRAINED_SVG", f"hf://howlin/SVG/{AE}.ckpt@{REV['howlin/SVG']}")
    assert pretrained_cfg("svg_vits16plus")["svg"].endswith(REV["howlin/SVG"])
    # registering a new model from another module
    register_pretrained("test_tiny_hub_demo", svg=HubFile("howlin/SVG", AE + ".ckpt"))
    assert resolve("hf", "test_tiny_hub_demo", "svg")[1]["filename"] == AE + ".ckpt"


def golden_meta(src):
    return Path(src["svg"]).parent / "dinov3_vits16plus_random.pth"


def test_specs_validated():
    with pytest.raises(ConfigError, match="ORG/NAME"):
        HubFile.parse("hf://only-one-part")
    with pytest.raises(ConfigError, match="relative path"):
        HubFile("a/b", "../x")
    with pytest.raises(ConfigError, match="no pretrained weights registered"):
        svgfeat.load_encoder(model="test_tiny", pretrained=True)
    with pytest.raises(ConfigError, match="pretrained=True"):
        svgfeat.load_dit("svg_dit_xl")


def test_offline_without_cache_is_one_clear_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as e:
        svgfeat.load_dit("svg_dit_xl", pretrained=True)
    msg = str(e.value)
    assert "howlin/SVG" in msg and DIT in msg and "HF_HUB_OFFLINE" in msg
    assert f"https://huggingface.co/howlin/SVG/resolve/main/{DIT}" in msg and "--dit PATH" in msg


def test_cli_offline_without_cache_exit_2(tmp_path, photos):
    from PIL import Image

    Image.fromarray(photos[0]).save(tmp_path / "a.png")
    r = subprocess.run(["svgfeat", "encode", str(tmp_path / "a.png"), "--pretrained", "-o", str(tmp_path / "f.st")],
                       env=hub_env(tmp_path / "empty_home"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr
    assert DINO_REPO in lines[0] and "model.safetensors" in lines[0] and "--dinov3 PATH" in lines[0]


def test_cli_generate_pretrained_from_local_hub(offline_cache, tmp_path, capsys):
    """`svgfeat generate --pretrained`: DiT, latent statistics and the SVG decoder all come from the Hub cache."""
    home, src = offline_cache
    if "stats" not in src:
        golden_path("../reference/dinov3_sp_stats.pt")  # skip locally, fail under CI=true
    from svgfeat.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--pretrained", "--classes", "1", "--n", "1", "--steps", "1", "-o", str(tmp_path / "g")])
    assert e.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "g" / "grid.png").is_file() and (tmp_path / "g" / "class0001_000.png").is_file()


# ------------------------------------------------------------------------ both howlin/SVG layouts; all missing at once
def _offline_at(monkeypatch, cache_dir):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_root_layout_checkpoints_at_repo_root_offline(tmp_path, golden, monkeypatch, images):
    """howlin/SVG with ``checkpoints/...`` and ``autoencoder/...`` at the repo root (no ``pretrained/``)."""
    src = build_golden_hub(tmp_path, golden, layout="root")
    _offline_at(monkeypatch, tmp_path / "hub")
    enc = svgfeat.load_encoder(pretrained=True)
    assert enc.provenance["svg"]["filename"] == AE[len("pretrained/"):] + ".ckpt"
    assert enc.provenance["svg_config"]["filename"] == AE[len("pretrained/"):] + ".yaml"
    ref = svgfeat.load_encoder(dinov3=src["dinov3"], svg=src["svg"], svg_config=src["svg_config"])
    assert torch.equal(enc.encode(images[:1]).latent, ref.encode(images[:1]).latent)
    dit = svgfeat.load_dit("svg_dit_xl", pretrained=True)
    assert dit.provenance["filename"] == "checkpoints/V1-SVG-XL-7000K-256x256.pt"
    assert dit.config == svgfeat.load_dit(src["dit"], config=src["dit_config"]).config


def test_pretrained_layout_is_still_found(offline_cache):
    enc = svgfeat.load_encoder(pretrained=True)
    assert enc.provenance["svg"]["filename"] == AE + ".ckpt"


def test_every_missing_file_is_named_in_one_error(tmp_path, monkeypatch):
    _offline_at(monkeypatch, tmp_path / "empty")
    with pytest.raises(CheckpointError) as e:
        svgfeat.load_encoder(pretrained=True)
    msg = str(e.value)
    assert msg.startswith("2 pretrained file(s) missing") and "HF_HUB_OFFLINE" in msg
    assert f"model.safetensors from Hugging Face repo {DINO_REPO}" in msg and "--dinov3 PATH" in msg
    assert f"{AE}.ckpt or {AE[len('pretrained/'):]}.ckpt from Hugging Face repo howlin/SVG" in msg
    assert "--svg PATH" in msg and ".yaml" not in msg  # the optional YAML is not required


def test_cli_generate_names_all_missing_files_in_one_line(tmp_path):
    r = subprocess.run(["svgfeat", "generate", "--pretrained", "--classes", "1", "-o", str(tmp_path / "g")],
                       env=hub_env(tmp_path / "empty_home"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: 4 pretrained file(s) missing"), r.stderr
    for name in (DIT, "dinov3_sp_stats.pt", "model.safetensors", AE + ".ckpt"):
        assert name in lines[0]
    assert "Retrying" not in r.stderr and not (tmp_path / "g").exists()


class _FakeHub:
    """A local HTTP server answering the Hub's repo-tree API (what an online listing reads), counting requests."""

    def __init__(self, trees: dict, status: int = 200):
        import http.server
        import threading

        hub = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if "/tree/" in self.path:  # (huggingface_hub's session may ask other endpoints on its own)
                    hub.requests.append(self.path)
                repo = self.path.split("/api/models/", 1)[-1].split("/tree/", 1)[0]
                body = json.dumps([{"type": "file", "path": p} for p in trees.get(repo, [])]).encode()
                code = status if repo in trees else 404
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Online mode against a local fake Hub; an empty cache; the per-process listing memo cleared."""
    from huggingface_hub import constants

    from svgfeat import hub as hub_mod

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_mod, "_LISTINGS", {})
    made = []

    def start(trees, status=200):
        made.append(_FakeHub(trees, status))
        monkeypatch.setattr(constants, "ENDPOINT", made[-1].url)
        return made[-1]

    yield start
    for h in made:
        h.close()


def test_online_one_listing_per_repo_picks_the_layout_that_exists(online):
    from svgfeat.hub import check_available
    from svgfeat.models.build import pretrained_files

    root_ae = AE[len("pretrained/"):]
    fake = online({"howlin/SVG": [root_ae + ".ckpt", "checkpoints/V1-SVG-XL-7000K-256x256.pt", "README.md"],
                   DINO_REPO: ["model.safetensors"]})
    files = {**pretrained_files("svg_vits16plus", ("dinov3", "svg", "svg_config")),
             **pretrained_files("svg_dit_xl", ("dit", "dit_config"))}
    got = check_available(files)
    assert got["svg"].filename == root_ae + ".ckpt" and got["dit"].filename == "checkpoints/V1-SVG-XL-7000K-256x256.pt"
    assert got["svg_config"] is None and got["dit_config"] is None  # optional and absent from the listing
    assert got["dinov3"].filename == "model.safetensors"
    assert sorted(p.split("/tree/")[0] for p in fake.requests) == sorted([f"/api/models/{DINO_REPO}",
                                                                          "/api/models/howlin/SVG"])
    # a required file the repo does not list is named (with every other one) at once, without asking again
    with pytest.raises(CheckpointError, match=r"1 pretrained file\(s\) missing \(the repo has no such file"):
        check_available(pretrained_files("svg_dit_xl", ("dit", "stats")))
    assert len(fake.requests) == 2


def test_online_hub_error_is_not_retried(online):
    """A Hub answering 503 is asked once per repo (huggingface_hub itself would retry for ~30 s); then the cache
    decides, and every missing file is named in one error."""
    from svgfeat.hub import check_available
    from svgfeat.models.build import pretrained_files

    fake = online({"howlin/SVG": [], DINO_REPO: []}, status=503)
    with pytest.raises(CheckpointError, match=r"2 pretrained file\(s\) missing \(it is not in the Hugging Face cache "
                                              r"and the Hub could not be reached"):
        check_available(pretrained_files("svg_vits16plus", ("dinov3", "svg", "svg_config")))
    assert len(fake.requests) == 2
