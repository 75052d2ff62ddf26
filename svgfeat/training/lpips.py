"""LPIPS perceptual distance with a VGG16 trunk (taming-transformers / LDM structure).

distance(x, y) for images in [-1, 1] [B, 3, H, W] -> [B, 1, 1, 1]:
    scaling layer  (x - shift) / scale            shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    VGG16 features relu1_2, relu2_2, relu3_3, relu4_3, relu5_3   (``net.slice1..5``)
    per layer k:   f = f / (||f||_channels + 1e-10);  d = (f_x - f_y)^2
                   lin_k: 1x1 conv C_k -> 1, no bias (``lin{k}.model.1.weight``, ``model.0`` is a Dropout)
                   spatial mean
    sum over the 5 layers.

Weights are never downloaded implicitly. Sources (see :func:`build_lpips`):
- VGG16: a torchvision ``vgg16`` state dict (``features.N.*``; e.g. ``vgg16-397923af.pth``), a full LPIPS state dict
  (``net.sliceK.N.*``), or the torchvision cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``) when present;
  ``allow_download=True`` lets torchvision fetch it.
- lin layers: LPIPS ``vgg.pth`` (taming or the ``lpips`` package, ``lin{k}.model.1.weight``), an official SVG
  training checkpoint (``loss.perceptual_loss.lin*``), or the ``lpips`` package's bundled file when installed.
- ``pretrained=False`` builds a randomly initialised trunk (positive lin weights): plumbing tests only.
``width_div`` divides every VGG width (test-size trunks; real weights need ``width_div=1``).

The module always stays in eval mode. In the official run it was most likely in train mode (Lightning's
``.train()`` reaches the loss module, overriding taming's ``LPIPS().eval()``), which turns on the p = 0.5
dropout in front of each lin layer; svgfeat treats that as unintended, like DINOv3's train mode.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .. import checkpoints as ck
from ..errors import CheckpointError, ConfigError

VGG_CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16().features indices of each slice: [0,4) [4,9) [9,16) [16,23) [23,30)
SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
LIN_PREFIXES = ("loss.perceptual_loss.", "perceptual_loss.", "")


def _vgg16_features(width_div: int = 1) -> list[nn.Module]:
    """torchvision's ``vgg16().features`` layer list (conv3x3 + ReLU(inplace=False), maxpool 2x2)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            cout = max(1, v // width_div)
            layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = cout
    return layers


class VGG16Slices(nn.Module):
    """VGG16 trunk split into the 5 LPIPS slices; forward returns the 5 feature maps."""

    def __init__(self, width_div: int = 1):
        super().__init__()
        feats = _vgg16_features(width_div)
        for k, (a, b) in enumerate(SLICE_BOUNDS, start=1):
            s = nn.Sequential()
            for i in range(a, b):
                s.add_module(str(i), feats[i])
            setattr(self, f"slice{k}", s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            out.append(x)
        return out


class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Dropout + 1x1 conv (no bias): keys ``model.1.weight``."""

    def __init__(self, cin: int, cout: int = 1):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, cout, 1, stride=1, padding=0, bias=False))


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """Frozen LPIPS(VGG16). ``forward(x, y)``: [B,3,H,W] in [-1,1] -> [B,1,1,1] (always eval mode)."""

    def __init__(self, width_div: int = 1):
        super().__init__()
        if width_div < 1:
            raise ConfigError(f"width_div must be >= 1, got {width_div}")
        self.width_div = width_div
        self.chns = [max(1, c // width_div) for c in VGG_CHANNELS]
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices(width_div)
        for k, c in enumerate(self.chns):
            setattr(self, f"lin{k}", NetLinLayer(c))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """LPIPS stays in eval mode (frozen; the lin-layer dropouts are off)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two [B,3,H,W] tensors of equal shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        f0 = self.net(self.scaling_layer(x))
        f1 = self.net(self.scaling_layer(y))
        val = 0
        for k in range(len(self.chns)):
            d = (normalize_tensor(f0[k]) - normalize_tensor(f1[k])) ** 2
            val = val + getattr(self, f"lin{k}").model(d).mean(dim=(2, 3), keepdim=True)
        return val

    # ----------------------------------------------------------------------------------------- weights
    def load_vgg(self, sd: dict, source: str = "") -> None:
        """Load the trunk from a torchvision vgg16 state dict (``features.N``) or an LPIPS one (``net.*``)."""
        target = self.net.state_dict()
        if any(k.startswith("features.") for k in sd):
            idx_to_slice = {i: k for k, (a, b) in enumerate(SLICE_BOUNDS, start=1) for i in range(a, b)}
            conv = {}
            for key, v in sd.items():
                parts = key.split(".")
                if parts[0] == "features" and int(parts[1]) in idx_to_slice:
                    conv[f"slice{idx_to_slice[int(parts[1])]}.{parts[1]}.{parts[2]}"] = v
            sd = conv
        else:
            sd = next((ck.strip_prefix(sd, p) for p in ("loss.perceptual_loss.net.", "perceptual_loss.net.", "net.")
                       if any(k.startswith(p) for k in sd)), {})
        ck.check_state(target, sd, "VGG16 (LPIPS trunk)", source)
        self.net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)

    def load_lin(self, sd: dict, source: str = "") -> None:
        """Load the 5 lin layers from an LPIPS ``vgg.pth`` or an official SVG training checkpoint."""
        if "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        for p in LIN_PREFIXES:
            lin = {k[len(p):]: v for k, v in sd.items() if k.startswith(p + "lin") and ".model.1.weight" in k}
            if lin:
                break
        target = {k: v for k, v in self.state_dict().items() if k.startswith("lin")}
        ck.check_state(target, lin, "LPIPS lin layers", source)
        self.load_state_dict({**self.state_dict(), **{k: v.float() for k, v in lin.items()}}, strict=True)

    def random_init(self, seed: int = 0) -> None:
        """Random trunk, positive constant lin weights (1/C_k): a well-posed but meaningless distance."""
        g = torch.Generator().manual_seed(seed)
        for m in self.net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * 9
                m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.data.zero_()
        for k, c in enumerate(self.chns):
            getattr(self, f"lin{k}").model[1].weight.data.fill_(1.0 / c)


# ----------------------------------------------------------------------------------------- builders
def _torchvision_cache_file() -> Path | None:
    p = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG16_FILE
    return p if p.is_file() else None


def _lpips_package_file() -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
    return p if p.is_file() else None


def build_lpips(vgg_weights=None, lin_weights=None, pretrained: bool = True, allow_download: bool = False,
                width_div: int = 1, device="cpu", seed: int = 0) -> LPIPS:
    """Build a frozen :class:`LPIPS` on ``device``.

    ``pretrained=False``: random trunk (tests; a warning-free plumbing check, not a perceptual metric).
    Otherwise the VGG16 trunk comes from ``vgg_weights``, or a file holding both trunk and lin layers
    (``lin_weights`` pointing at a full LPIPS state dict), or the torchvision cache, or (``allow_download``)
    torchvision's download; lin layers from ``lin_weights`` or the ``lpips`` package's bundled ``vgg.pth``.
    Raises :class:`CheckpointError` naming what is missing.
    """
    m = LPIPS(width_div)
    if not pretrained:
        m.random_init(seed)
        return m.to(device)
    if width_div != 1:
        raise ConfigError(f"pretrained LPIPS needs the full VGG16 (width_div=1), got width_div={width_div}")
    lin_path = lin_weights or os.environ.get("SVGFEAT_LPIPS_WEIGHTS") or _lpips_package_file()
    if lin_path is None:
        raise CheckpointError(
            "LPIPS lin-layer weights not found: pass the LPIPS 'vgg.pth' (taming-transformers or the lpips "
            "package; keys lin0..4.model.1.weight) with --lpips-weights, or set SVGFEAT_LPIPS_WEIGHTS")
    lin_sd = ck.load_file(lin_path)
    m.load_lin(lin_sd, Path(lin_path).name)
    vgg_sd, vgg_src = None, ""
    if vgg_weights is not None:
        vgg_sd, vgg_src = ck.load_file(vgg_weights), Path(vgg_weights).name
    elif any(".net.slice1." in k or k.startswith("net.slice1.") for k in lin_sd):
        vgg_sd, vgg_src = lin_sd, Path(lin_path).name
    elif os.environ.get("SVGFEAT_VGG16_WEIGHTS"):
        vgg_sd, vgg_src = ck.load_file(os.environ["SVGFEAT_VGG16_WEIGHTS"]), os.environ["SVGFEAT_VGG16_WEIGHTS"]
    elif _torchvision_cache_file() is not None:
        vgg_sd, vgg_src = ck.load_file(_torchvision_cache_file()), str(_torchvision_cache_file())
    elif allow_download:
        import torchvision

        vgg_sd = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1).state_dict()
        vgg_src = "torchvision download"
    if vgg_sd is None:
        raise CheckpointError(
            "VGG16 weights for LPIPS not found: pass torchvision's vgg16 state dict (vgg16-397923af.pth) with "
            f"--vgg-weights, put it in the torchvision cache ({Path(torch.hub.get_dir()) / 'checkpoints'}), or set "
            "SVGFEAT_VGG16_WEIGHTS")
    m.load_vgg(vgg_sd, vgg_src)
    return m.to(device)
