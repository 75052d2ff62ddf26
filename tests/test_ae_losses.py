"""AE losses, LPIPS, discriminator, masking, RoPE rescale and reconstruction metrics (issue G)."""

import math

import numpy as np
import pytest
import torch

import svgfeat
from conftest import GOLDEN, ON_CI, golden_path
from svgfeat.errors import CheckpointError, ConfigError
from svgfeat.training.discriminator import GlobalBatchNorm2d, NLayerDiscriminator, build_discriminator
from svgfeat.training.losses import (
    AELoss,
    adaptive_weight,
    adaptive_weight_from_grads,
    adopt_weight,
    hinge_d_loss,
    reconstruction_loss,
)
from svgfeat.training.lpips import LPIPS, build_lpips

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


# ----------------------------------------------------------------------------------------- losses
def test_hinge_loss_hand_value():
    real = torch.tensor([0.5, 2.0, -1.0])   # relu(1 - x) = 0.5, 0, 2   -> mean 5/6
    fake = torch.tensor([-2.0, 0.5, 0.0])   # relu(1 + x) = 0, 1.5, 1   -> mean 5/6
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 5 / 6), abs=1e-7)


def test_adopt_weight():
    assert adopt_weight(1.0, 2500, 2501) == 0.0
    assert adopt_weight(1.0, 2501, 2501) == 1.0


def test_adaptive_weight_hand_value():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    nll = (3.0 * w).sum()                              # grad (3, 3): norm sqrt(18)
    g = (w * torch.tensor([0.1, 0.2])).sum()           # grad (0.1, 0.2): norm sqrt(0.05)
    d = adaptive_weight(nll, g, w, disc_weight=0.5)
    assert d.item() == pytest.approx(math.sqrt(18) / (math.sqrt(0.05) + 1e-4) * 0.5, rel=1e-6)
    assert not d.requires_grad
    # clamp at 1e4 (times disc_weight) when the generator gradient vanishes
    assert adaptive_weight_from_grads(torch.tensor([3.0, 3.0]), torch.zeros(2), 0.5).item() == pytest.approx(5000.0)
    # a gradient reduction (mean over ranks) is applied before the norms
    d2 = adaptive_weight((3.0 * w).sum(), (w * torch.tensor([0.1, 0.2])).sum(), w, 0.5, grad_reduce=lambda t: 2 * t)
    assert d2.item() == pytest.approx(2 * math.sqrt(18) / (2 * math.sqrt(0.05) + 1e-4) * 0.5, rel=1e-6)


def test_reconstruction_loss_sum_and_mean():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.5)
    s, logs = reconstruction_loss(x, y, None, 0.0, "sum")
    m, _ = reconstruction_loss(x, y, None, 0.0, "mean")
    assert s.item() == pytest.approx(0.5 * 3 * 8 * 8)   # per-image sum, / B
    assert m.item() == pytest.approx(0.5)
    assert logs["l1"].item() == pytest.approx(0.5)

    class ConstLPIPS(torch.nn.Module):
        def forward(self, a, b):
            return torch.full((a.shape[0], 1, 1, 1), 0.25)

    s2, logs2 = reconstruction_loss(x, y, ConstLPIPS(), 1.0, "sum")  # LPIPS broadcast to every pixel
    assert s2.item() == pytest.approx((0.5 + 0.25) * 3 * 8 * 8)
    assert logs2["lpips"].item() == pytest.approx(0.25)
    with pytest.raises(ConfigError):
        reconstruction_loss(x, y, None, 0.0, "median")


def test_generator_loss_gated_and_adaptive():
    torch.manual_seed(0)
    disc = build_discriminator(ndf=8, seed=0)
    last = torch.nn.Parameter(torch.randn(3, 4, 3, 3) * 0.1)
    feats = torch.randn(2, 4, 32, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = AELoss(None, disc, disc_start=10, perceptual_weight=0.0)

    def rec():
        return torch.nn.functional.conv2d(feats, last, padding=1)

    before, logs = loss.generator_loss(x, rec(), last, step=9)
    nll, _ = reconstruction_loss(x, rec(), None, 0.0)
    assert before.item() == pytest.approx(nll.item()) and logs["d_weight"].item() == 0
    assert loss.discriminator_loss(x, rec(), 9)[0] is None
    after, logs = loss.generator_loss(x, rec(), last, step=10)
    # hand: nll + d_w * g with d_w from the two gradient norms
    xr = rec()
    nll = reconstruction_loss(x, xr, None, 0.0)[0]
    g = -disc(xr).mean()
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
    dw = (gn / (gg + 1e-4)).clamp(0, 1e4) * 0.5
    assert logs["d_weight"].item() == pytest.approx(dw.item(), rel=1e-4)
    assert after.item() == pytest.approx((nll + dw * g).item(), rel=1e-4)
    assert all(p.grad is None for p in disc.parameters())  # the generator step leaves D untouched
    d_loss, dlogs = loss.discriminator_loss(x, xr, 10)
    assert d_loss.item() == pytest.approx(hinge_d_loss(disc(x), disc(xr.detach())).item(), rel=1e-5)


# ----------------------------------------------------------------------------------------- discriminator
def test_discriminator_layout_init_and_official_keys():
    torch.manual_seed(0)
    d = NLayerDiscriminator()
    d2 = build_discriminator(seed=0)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    convs = [m for m in d2.modules() if isinstance(m, torch.nn.Conv2d)]
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.001
    bns = torch.cat([m.weight for m in d2.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bns.mean().item() - 1) < 0.01 and 0.01 < bns.std().item() < 0.03
    assert all((m.bias == 0).all() for m in d2.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert [n for n, m in d.main.named_children() if isinstance(m, torch.nn.BatchNorm2d)] == ["3", "6", "9"]
    ckpt = golden_path("svg_ae_shared.ckpt")
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    disc_sd = {k[len("loss.discriminator."):]: v for k, v in sd.items() if k.startswith("loss.discriminator.")}
    d.load_state_dict(disc_sd, strict=True)  # identical key names and shapes to the official module


def test_global_batchnorm_equals_batchnorm_in_one_process():
    torch.manual_seed(0)
    a, b = torch.nn.BatchNorm2d(4), GlobalBatchNorm2d(4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.running_var, a.running_var)
    torch.testing.assert_close(b.running_mean, a.running_mean)
    w = torch.randn(3, 4, 5, 5)
    ga = torch.autograd.grad((ya * w).sum(), x)[0]
    gb = torch.autograd.grad((yb * w).sum(), x)[0]
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


# ----------------------------------------------------------------------------------------- LPIPS
def _manual_lpips(vgg_features, lins, x, y):
    """LPIPS by hand from torchvision's vgg16().features (relu1_2, 2_2, 3_3, 4_3, 5_3 = layers 3, 8, 15, 22, 29)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}
    fx, fy = [], []
    a, b = (x - shift) / scale, (y - shift) / scale
    for i, layer in enumerate(vgg_features[:30]):
        a, b = layer(a), layer(b)
        if i in taps:
            fx.append(a)
            fy.append(b)
    total = 0
    for k in range(5):
        na = fx[k] / (fx[k].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fy[k] / (fy[k].pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        d = (na - nb) ** 2
        total = total + (d * lins[k].view(1, -1, 1, 1)).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    return total


def test_lpips_structure_loading_and_hand_value(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # torchvision vgg16().features (the classifier is not needed)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    lins = [torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    torch.save({f"lin{k}.model.1.weight": w for k, w in enumerate(lins)}, tmp_path / "vgg.pth")
    m = build_lpips(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    assert {k for k in m.state_dict() if k.startswith("lin")} == {f"lin{k}.model.1.weight" for k in range(5)}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    out = m(x, y)
    assert out.shape == (2, 1, 1, 1)
    ref = _manual_lpips(features.eval(), [w.flatten() for w in lins], x, y)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert m(x, x).abs().max().item() < 1e-6
    m.train()
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    # lin layers of an official SVG training checkpoint (loss.perceptual_loss.lin*)
    if ON_CI or (GOLDEN / "svg_ae_shared.ckpt").is_file():  # CI=true: the golden file is required
        sd = torch.load(golden_path("svg_ae_shared.ckpt"), weights_only=True)["state_dict"]
        m.load_lin(sd, "svg_ae_shared.ckpt")
        torch.testing.assert_close(m.lin0.model[1].weight, sd["loss.perceptual_loss.lin0.model.1.weight"])


def test_lpips_weights_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("SVGFEAT_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("SVGFEAT_VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr("svgfeat.training.lpips._lpips_package_file", lambda: None)
    with pytest.raises(CheckpointError, match="lpips-weights"):
        build_lpips()
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))},
               tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match="vgg-weights"):
        build_lpips(lin_weights=tmp_path / "vgg.pth")
    tiny = build_lpips(pretrained=False, width_div=8)
    assert isinstance(tiny, LPIPS) and tiny.chns == [8, 16, 32, 64, 64]
    assert tiny(torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)).item() > 0


# ----------------------------------------------------------------------------------------- masking
class _Identity(torch.nn.Module):
    mode = "batch"

    def forward(self, dino, residual):
        return residual


def test_mask_token_replaces_whole_residual_maps():
    enc = svgfeat.create_model("test_tiny").eval()
    assert enc.mask_ratio == pytest.approx(0.1) and enc.mask_token.shape == (1, 8, 1)
    with torch.no_grad():
        enc.mask_token.copy_(torch.arange(8.0).view(1, 8, 1))
    enc.align = _Identity()  # expose the residual before alignment
    x = torch.randn(6, 3, 64, 64)
    raw = enc.raw_residual(x)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(6, generator=torch.Generator().manual_seed(0))
    enc.config["mask_ratio"] = 0.5
    out = enc.forward(x, mask=True, generator=g).residual
    keep = u >= 0.5
    assert keep.any() and (~keep).any()
    for i in range(6):
        if keep[i]:
            torch.testing.assert_close(out[i], raw[i])
        else:  # hand value: channel c is the constant c over the whole 4x4 map
            assert torch.equal(out[i], torch.arange(8.0).view(8, 1, 1).expand(8, 4, 4))
    # no masking in plain encode() and with mask=False
    torch.testing.assert_close(enc.forward(x, mask=False).residual, raw)


def test_training_latent_matches_encoder_forward():
    from svgfeat.training.ae_model import mask_keep, training_latent

    enc = svgfeat.create_model("test_tiny").eval()
    enc.config["mask_ratio"] = 0.5
    x = torch.randn(4, 3, 64, 64)
    ref = enc.forward(x, mask=True, generator=torch.Generator().manual_seed(1)).latent
    keep = mask_keep(torch.Generator().manual_seed(1), 4, 0.5)
    torch.testing.assert_close(training_latent(enc, x, keep), ref)


# ----------------------------------------------------------------------------------------- RoPE rescale
def test_rope_rescale_wrapper():
    from svgfeat.training.rope_aug import (
        dinov3_rope_coords,
        install_rope_rescale,
        remove_rope_rescale,
        rope_rescale_active,
    )

    enc = svgfeat.create_model("test_tiny").eval()
    with torch.no_grad():  # make the blocks and positions matter (LayerScale init 1e-5, near-uniform attention)
        for blk in enc.backbone.model.blocks:
            blk.gamma_1.fill_(0.5)
            blk.gamma_2.fill_(0.5)
            blk.attn.qkv.weight.mul_(30)
    x = torch.randn(2, 3, 64, 48)
    ref = enc.backbone(x).patch
    w = install_rope_rescale(enc.backbone, 2.0)
    assert torch.equal(enc.backbone(x).patch, ref)               # disabled: untouched
    torch.testing.assert_close(w.embed((4, 3)), w.inner.get_embed(shape=(4, 3)), rtol=0, atol=1e-6)
    # hand value at scale s: angles = 2 pi (s * coord) / period, [sin, sin, cos, cos] halves
    s, periods = 1.7, w.inner.periods
    ang = (2 * math.pi * (s * dinov3_rope_coords(4, 3))[:, :, None] / periods).flatten(1)
    torch.testing.assert_close(w.embed((4, 3), s), torch.cat([ang.sin(), ang.sin(), ang.cos(), ang.cos()], -1))
    scales = []
    for seed in range(20):
        with rope_rescale_active(w, torch.Generator().manual_seed(seed)):
            out = enc.backbone(x).patch
        scales.append(w.last_scale)
    assert all(0.5 <= v <= 2.0 for v in scales) and min(scales) < 0.9 and max(scales) > 1.1
    assert (out - ref).abs().max() > 1e-3                        # the augmentation changes the features
    with rope_rescale_active(w, torch.Generator().manual_seed(19)):
        again = enc.backbone(x).patch
    assert torch.equal(again, out)                               # same generator, same draw
    remove_rope_rescale(enc.backbone)
    assert torch.equal(enc.backbone(x).patch, ref)
    with pytest.raises(ConfigError):
        install_rope_rescale(enc.backbone, 0.5)


# ----------------------------------------------------------------------------------------- metrics
def test_psnr_and_ssim_match_skimage():
    from skimage.data import astronaut, coffee
    from skimage.metrics import structural_similarity

    from svgfeat.training.recon_metrics import psnr, ssim

    a = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    b = torch.tensor([[[[0.1, 1.0], [0.5, 0.3]]]])
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(1 / ((0.01 + 0.04) / 4)))
    rng = np.random.default_rng(0)
    img = astronaut()[100:164, 150:230] / 255.0
    pairs = [(img, np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)),
             (coffee()[:48, :40] / 255.0, coffee()[5:53, 3:43] / 255.0),
             (rng.random((23, 31, 3)), rng.random((23, 31, 3)))]
    for p, q in pairs:
        ref = structural_similarity(p, q, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=-1)
        mine = ssim(torch.from_numpy(p).permute(2, 0, 1)[None], torch.from_numpy(q).permute(2, 0, 1)[None])
        assert mine.item() == pytest.approx(ref, abs=1e-10)
    assert ssim(torch.ones(1, 3, 16, 16), torch.ones(1, 3, 16, 16)).item() == pytest.approx(1.0)
