"""`svgfeat doctor`: what is installed, which devices exist, where weights were found."""

import importlib
import os
from pathlib import Path

import click

WEIGHT_HINTS = {
    "SVGFEAT_DINOV3": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
    "SVGFEAT_SVG": "svg_autoencoder_dinov3s16p_vit-s_epoch40.ckpt",
    "SVGFEAT_DIT": "V1-SVG-XL-7000K-256x256.pt",
}


def _version(mod):
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:  # report any import failure, whatever its type
        return f"not available ({type(e).__name__})"


@click.command()
def doctor():
    """Report torch/CUDA/timm/faiss/mmseg availability and where weights were found."""
    import torch

    from .._version import __version__
    from ..models.build import list_models

    click.echo(f"svgfeat      {__version__}")
    click.echo(f"torch        {torch.__version__}  cuda={'yes' if torch.cuda.is_available() else 'no'}"
               + (f" ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    for mod in ("timm", "torchvision", "numpy", "sklearn", "mmseg", "mmengine", "mmcv"):
        click.echo(f"{mod:<12} {_version(mod)}")
    from ..heads.faiss_gpu import installed

    f = installed()
    dists = ", ".join(f"{k} {v}" for k, v in f["distributions"].items()) or "none"
    if f["module"]:
        kind = f"GPU build, {f['gpus']} GPU(s) visible" if f["gpus"] else "CPU build (no GPU support)"
        click.echo(f"faiss        {f['version']} active: {kind}; from {f['module']}; installed: {dists}")
    else:
        click.echo(f"faiss        not installed (exact torch search only; pip install 'svgfeat[faiss]' or "
                   f"'svgfeat[faiss-gpu]'); installed distributions: {dists}")
    if f["conflict"]:
        click.echo(f"WARNING      faiss: {f['conflict']}")
    click.echo("weights (environment variables or the Hugging Face cache):")
    for var, name in WEIGHT_HINTS.items():
        v = os.environ.get(var)
        state = (f"{v} ({'found' if Path(v).exists() else 'MISSING'})" if v else "not set")
        click.echo(f"  {var:<15} {state}   expected file: {name}")
    hf = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    cached = sorted(p.name for p in hf.glob("models--*dinov3*")) + sorted(p.name for p in hf.glob("models--howlin--SVG"))
    click.echo(f"  HF cache {hf}: {', '.join(cached) if cached else 'no DINOv3/SVG models'}")
    click.echo("registered models: " + ", ".join(list_models()))
