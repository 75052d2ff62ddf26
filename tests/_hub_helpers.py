"""Build a local Hugging Face Hub cache (the standard layout) from the golden files, for offline tests.

Layout (what ``huggingface_hub.hf_hub_download`` reads with ``HF_HUB_OFFLINE=1``):
``$HF_HOME/hub/models--ORG--NAME/refs/main`` (a 40-hex commit) and
``$HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/<path in repo>``. Files are symlinks into the golden
folder (or files written under the temporary folder); nothing is written into the project.
"""

from __future__ import annotations

import os
from pathlib import Path

REV = {"timm/vit_small_plus_patch16_dinov3_qkvb.lvd1689m": "1" * 40, "howlin/SVG": "2" * 40}
DINO_REPO = "timm/vit_small_plus_patch16_dinov3_qkvb.lvd1689m"
AE = "pretrained/autoencoder/svg_autoencoder_dinov3s16p_vit-s_epoch40"
DIT = "pretrained/checkpoints/V1-SVG-XL-7000K-256x256.pt"


def timm_layout_dinov3(meta_pth: Path, out: Path) -> Path:
    """Convert a Meta-layout DINOv3 .pth into timm's ``model.safetensors`` layout (what timm's Hub repo holds)."""
    import torch
    from safetensors.torch import save_file

    from svgfeat.models.dinov3 import DinoV3Backbone

    bb = DinoV3Backbone("vit_small_plus")
    sd = torch.load(meta_pth, map_location="cpu", weights_only=True)
    bb.model.load_state_dict(bb.load_meta_or_timm_state(sd), strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(out))
    return out


def place(hf_home: Path, repo: str, filename: str, source: Path) -> Path:
    """Put ``source`` into the cache as ``repo``/``filename`` (symlink) and write refs/main."""
    root = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    rev = REV.get(repo, "3" * 40)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    dst = root / "snapshots" / rev / filename
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    os.symlink(Path(source).resolve(), dst)
    return dst


def build_golden_hub(hf_home: Path, golden, yaml: bool = True, dit: bool = True, layout: str = "pretrained") -> dict:
    """Cache holding the golden files under the released names; returns {role: local source path}.

    ``golden`` is conftest's ``golden_path`` (skips or fails per CI when absent). ``layout``: where howlin/SVG
    keeps its files: "pretrained" (``pretrained/autoencoder/...``, the official README's) or "root" (the same
    paths without ``pretrained/``: ``checkpoints/...`` at the repo root)."""
    hf_home = Path(hf_home)

    def put(home, repo, filename, source):  # the layout applies to howlin/SVG only
        if layout == "root" and repo == "howlin/SVG" and filename.startswith("pretrained/"):
            filename = filename[len("pretrained/"):]
        return place(home, repo, filename, source)

    timm_file = timm_layout_dinov3(golden("dinov3_vits16plus_random.pth"), hf_home / "src" / "model.safetensors")
    src = {"dinov3": timm_file, "svg": golden("svg_ae_shared.ckpt"), "svg_config": golden("svg_ae_shared.yaml")}
    put(hf_home, DINO_REPO, "model.safetensors", timm_file)
    put(hf_home, "howlin/SVG", AE + ".ckpt", src["svg"])
    if yaml:
        put(hf_home, "howlin/SVG", AE + ".yaml", src["svg_config"])
    if dit:
        src["dit"], src["dit_config"] = golden("svg_dit_shared.pt"), golden("svg_dit_shared.yaml")
        put(hf_home, "howlin/SVG", DIT, src["dit"])
        put(hf_home, "howlin/SVG", "pretrained/svg_xl_pretrained_config.yaml", src["dit_config"])
        stats = Path(golden("README.md")).parent.parent / "reference" / "dinov3_sp_stats.pt"
        if stats.is_file():
            src["stats"] = stats
            put(hf_home, "howlin/SVG", "dinov3_sp_stats.pt", stats)
    return src


def hub_env(hf_home: Path, **extra) -> dict:
    """Environment for a subprocess that must read only the local cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env
