"""Options shared by several commands (weights, device) and small helpers."""

from __future__ import annotations

import functools
import inspect

import click

from ._types import DEVICE, ENCODER

dinov3_option = click.option(
    "--dinov3", "dinov3", type=click.Path(dir_okay=False), default=None,
    help="DINOv3 weights (Meta .pth, timm .safetensors or 'hf' for the Hugging Face cache).",
)
svg_option = click.option(
    "--svg", "svg", type=click.Path(dir_okay=False), default=None,
    help="SVG autoencoder checkpoint (official Lightning .ckpt or svgfeat .safetensors). Omit for DINOv3 only.",
)
svg_config_option = click.option(
    "--svg-config", "svg_config", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Official YAML config of the SVG checkpoint (needed for .ckpt files whose decoder is not the default).",
)
model_option = click.option(
    "--model", "model", default=None, type=ENCODER,
    help="Registered model name (see `svgfeat doctor`); test_* variants run with random weights.",
)
alignment_option = click.option(
    "--alignment", type=click.Choice(["batch", "fixed"]), default="batch", show_default=True,
    help="Residual alignment: batch statistics (official) or frozen statistics.",
)
device_option = click.option("--device", default="cpu", show_default=True, type=DEVICE,
                              help="torch device, e.g. cpu or cuda:0.")

DENSE_PRECISION_HELP = ("Numerics of the encoder and head forward passes (recorded in head.json / metrics.json); "
                        "bf16/fp16: autocast.")


def precision_option(choices=("fp32", "bf16", "fp16"), help: str = DENSE_PRECISION_HELP, default: str = "fp32"):
    """The one ``--precision`` option (a :class:`svgfeat.numerics.Numerics` precision; checked against the device
    by ``Numerics.for_device``): each command names the precisions it runs and what they apply to."""
    return click.option("--precision", default=default, show_default=True, type=click.Choice(list(choices)),
                        help=help)


pretrained_option = click.option(
    "--pretrained", "pretrained", is_flag=True, default=False,
    help="Use the released weights from the Hugging Face Hub for every weight file not given (svg_vits16plus: "
         "DINOv3 from timm/vit_small_plus_patch16_dinov3_qkvb.lvd1689m, SVG autoencoder from howlin/SVG). "
         "Cached in $HF_HOME; HF_HUB_OFFLINE=1 uses only the cache.",
)


def pretrained_specs(dinov3, svg, svg_config, model):
    """--pretrained: fill the weight options that were not given with Hub specs ('hf', see svgfeat.hub)."""
    from ..hub import pretrained_cfg

    cfg = pretrained_cfg(model or "svg_vits16plus")
    fill = lambda v, role: v if v is not None else ("hf" if role in cfg else None)  # noqa: E731
    return fill(dinov3, "dinov3"), fill(svg, "svg"), fill(svg_config, "svg_config")


def encoder_options(f):
    """Decorator adding --dinov3/--svg/--svg-config/--model/--alignment/--device and --pretrained.

    --pretrained is consumed here (the command keeps its signature): it turns the missing weight options into
    Hub specs. A command that also takes other weights (e.g. a DiT) receives ``pretrained`` when its function
    has a ``pretrained`` parameter."""
    for opt in reversed([dinov3_option, svg_option, svg_config_option, model_option, alignment_option, device_option]):
        f = opt(f)
    wants = "pretrained" in inspect.signature(f).parameters

    @functools.wraps(f)
    def wrapper(*args, pretrained=False, **kw):
        if pretrained:
            kw["dinov3"], kw["svg"], kw["svg_config"] = pretrained_specs(kw.get("dinov3"), kw.get("svg"),
                                                                         kw.get("svg_config"), kw.get("model"))
        if wants:
            kw["pretrained"] = pretrained
        return f(*args, **kw)

    return pretrained_option(wrapper)


def build_encoder(dinov3, svg, svg_config, model, alignment, device):
    """Build an SVGEncoder from CLI options (thin wrapper over :func:`svgfeat.load_encoder`)."""
    from ..models.build import load_encoder

    return load_encoder(dinov3=dinov3, svg=svg, svg_config=svg_config, model=model,
                        alignment=alignment, device=device)


def printable(name) -> str:
    """A file name safe to print on one line: control characters, newlines and undecodable bytes escaped
    (repr-style), everything else unchanged."""
    s = str(name)
    if s.isprintable():
        return s
    return repr(s)[1:-1]


class OutputFailed(click.ClickException):
    """An output could not be written (disk full, read-only, ...): one line, exit status 1."""

    exit_code = 1


overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace output files that svgfeat did not write (checked before the work).")

def write_output(path, data) -> None:
    """:func:`svgfeat.outputs.write_output`, a failed write one line with exit status 1 (check first with
    :func:`svgfeat.outputs.check_outputs`)."""
    from ..errors import CacheError
    from ..outputs import write_output as write

    try:
        write(path, data)
    except (OSError, CacheError) as e:
        raise OutputFailed(str(e) if isinstance(e, CacheError) else
                           f"cannot write {printable(path)}: {e.strerror or e}") from None
