"""SVG-T2I Autoencoder-R / -P parity with the official code (../shared/golden-t2i), max abs error <= 1e-4.

Each golden case is computed once per module (full-size DINOv3 + 12-layer residual ViT on CPU) and every
stored array is compared: batch encode, per-image encode, decode, at 256 and 512.
"""

import warnings

import numpy as np
import pytest
import torch

import svgfeat
from conftest import golden_path, golden_t2i, normalise
from svgfeat.errors import CheckpointError
from svgfeat.models.residual_rope import ResidualRoPEEncoder, grid_positions

TOL = 1e-4


def _dino():
    return golden_path("dinov3_vits16plus_random.pth")


@pytest.fixture(scope="module")
def enc_r():
    return svgfeat.load_encoder(dinov3=_dino(), svg=golden_t2i("svg_autoencoder-R_random.ckpt"),
                                svg_config=golden_t2i("svg_autoencoder_R_random.yaml"))


@pytest.fixture(scope="module")
def enc_p():
    return svgfeat.load_encoder(dinov3=_dino(), svg=golden_t2i("svg_autoencoder-P_random.ckpt"),
                                svg_config=golden_t2i("svg_autoencoder_P_random.yaml"))


def _run(enc, case: str, single: bool, decode_single: bool) -> tuple[dict, dict]:
    """(ours, reference) arrays of one golden case; ours computed the way the reference was made."""
    g = dict(np.load(golden_t2i(f"{case}_astronaut_coffee.npz")))
    x = torch.from_numpy(g["x_dino"]) if "x_dino" in g else normalise(g["image_uint8"])
    raw = []  # the residual encoder's output before alignment, taken from the same pass
    hook = enc.residual.register_forward_hook(lambda m, i, o: raw.append(o)) if enc.residual is not None else None
    f = enc.encode(x)
    if hook is not None:
        hook.remove()
    ours = {"latent": f.latent, "dino_features": f.dino.flatten(2), "decoded": enc.decode(f.latent)}
    if f.residual is not None:
        ours["residual_aligned"] = f.residual.flatten(2)
        ours["residual_raw"] = raw[0].flatten(2)
    if single:
        fs = [enc.encode(x[i:i + 1]) for i in range(len(x))]
        ours["latent_single"] = torch.cat([s.latent for s in fs])
        ours["residual_aligned_single"] = torch.cat([s.residual for s in fs]).flatten(2)
        if decode_single:
            ours["decoded_single"] = enc.decode(ours["latent_single"])
    return ours, g


@pytest.fixture(scope="module")
def r256(enc_r):
    return _run(enc_r, "R256", single=True, decode_single=True)


@pytest.fixture(scope="module")
def r512(enc_r):
    return _run(enc_r, "R512", single=True, decode_single=False)


@pytest.fixture(scope="module")
def p512(enc_p):
    return _run(enc_p, "P512", single=False, decode_single=False)


R_ARRAYS = ("dino_features", "residual_raw", "residual_aligned", "latent", "decoded", "latent_single",
            "residual_aligned_single")


def _compare(ours, ref, names):
    errs = {k: float((ours[k] - torch.from_numpy(ref[k])).abs().max()) for k in names}
    print("max abs errors:", {k: f"{e:.2e}" for k, e in errs.items()})  # shown with pytest -s
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"max abs error above {TOL}: {bad} (all: {errs})"


def test_r256_every_array_matches_official(r256):
    ours, ref = r256
    assert ours["latent"].shape == (2, 392, 16, 16)
    _compare(ours, ref, R_ARRAYS + ("decoded_single",))
    # the official alignment is batch dependent: the two references really differ
    assert np.abs(ref["latent"] - ref["latent_single"]).max() > 0.05


def test_r512_every_array_matches_official(r512):
    ours, ref = r512
    assert ours["latent"].shape == (2, 392, 32, 32) and ours["decoded"].shape == (2, 3, 512, 512)
    _compare(ours, ref, R_ARRAYS)


def test_p512_matches_official_and_has_no_residual(p512, r512):
    ours, ref = p512
    assert ours["latent"].shape == (2, 384, 32, 32) and "residual_aligned" not in ours
    _compare(ours, ref, ("latent", "decoded"))
    assert torch.equal(ours["latent"], r512[0]["latent"][:, :384])  # same DINOv3, same images


def test_families_stages_and_registry(enc_r, enc_p):
    assert (enc_r.family, enc_r.latent_channels, enc_r.residual.arch) == ("t2i-r", 392, "rope_mixed")
    assert (enc_p.family, enc_p.latent_channels, enc_p.residual, enc_p.align) == ("t2i-p", 384, None, None)
    assert enc_r.stage is None and enc_r.config["name"] == "svg_t2i_r_vits16plus"
    assert enc_p.config["decoder"]["z_channels"] == 384
    # the official decoder forces attention on the lowest level even with attn_resolutions: []
    assert len(enc_r.decoder.up[4].attn) == 2 and len(enc_r.decoder.up[3].attn) == 0
    names = svgfeat.list_models("svg_t2i_*")
    assert {"svg_t2i_p_vits16plus", "svg_t2i_r_vits16plus", "svg_t2i_r_vits16plus_stage3"} <= set(names)
    assert len(names) == 8
    with pytest.raises(ValueError, match="stage"):
        svgfeat.create_model("svg_t2i_p_vits16plus", stage=4)


def test_preprocessing_matches_official_resize():
    import skimage.data

    g = np.load(golden_t2i("R256_astronaut_coffee.npz"))
    x = svgfeat.preprocess([skimage.data.astronaut(), skimage.data.coffee()], preset="resize", size=256)
    assert (x - torch.from_numpy(g["x_dino"])).abs().max() <= 1e-6


def test_yaml_free_loading_infers_family_and_decoder(enc_r, enc_p):
    for enc, f in ((enc_r, "R"), (enc_p, "P")):
        e = svgfeat.load_encoder(dinov3=_dino(), svg=golden_t2i(f"svg_autoencoder-{f}_random.ckpt"))
        assert e.family == enc.family and e.config["decoder"] == enc.config["decoder"]
        assert e.config["residual"] == enc.config["residual"]
        sd, ref = e.state_dict(), enc.state_dict()
        assert sd.keys() == ref.keys()
        for k in sd:  # (the unset fixed alignment statistics are NaN)
            torch.testing.assert_close(sd[k], ref[k], rtol=0, atol=0, equal_nan=True)


def test_released_r_yaml_copied_from_p_trusts_the_weights(tmp_path):
    """The released svg_autoencoder_R_stage*.yaml are copies of the P ones: weights win, with a warning."""
    p_yaml = golden_t2i("svg_autoencoder_P_random.yaml").read_text()
    y = tmp_path / "svg_autoencoder_R_stage2_512.yaml"
    y.write_text(p_yaml.replace("svg_autoencoder-P_random.ckpt", "svg_autoencoder-R_random.ckpt"))
    with pytest.warns(UserWarning, match="t2i-p autoencoder but the weights .* are t2i-r"):
        e = svgfeat.load_encoder(dinov3=_dino(), svg=golden_t2i("svg_autoencoder-R_random.ckpt"), svg_config=y)
    assert e.family == "t2i-r" and e.latent_channels == 392 and e.stage == 2  # stage from the file name
    # the other way round (an R yaml with a P checkpoint) cannot be repaired: refused clearly
    with pytest.raises(CheckpointError, match="has no extra_vit"):
        svgfeat.load_encoder(dinov3=_dino(), svg=golden_t2i("svg_autoencoder-P_random.ckpt"),
                             svg_config=golden_t2i("svg_autoencoder_R_random.yaml"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matching yaml: no warning
        e = svgfeat.load_encoder(dinov3=_dino(), svg=golden_t2i("svg_autoencoder-P_random.ckpt"),
                                 svg_config=golden_t2i("svg_autoencoder_P_random.yaml"), stage=3)
    assert e.stage == 3


def test_encoder_prefixed_dinov3_in_the_checkpoint(tmp_path, r256):
    """A Lightning checkpoint that embeds the frozen DINOv3 as encoder.* needs no dinov3= file."""
    ck = torch.load(golden_t2i("svg_autoencoder-R_random.ckpt"), weights_only=True)
    dino = torch.load(_dino(), weights_only=True)
    ck["state_dict"].update({f"encoder.{k}": v for k, v in dino.items()})
    path = tmp_path / "svg_autoencoder-R-embedded.ckpt"
    torch.save(ck, path)
    e = svgfeat.load_encoder(svg=path, svg_config=golden_t2i("svg_autoencoder_R_random.yaml"))
    ours, ref = r256
    z = e.encode(torch.from_numpy(ref["x_dino"])).latent
    assert e.family == "t2i-r" and (z - torch.from_numpy(ref["latent"])).abs().max() <= TOL


def test_non_square_runs_and_is_consistent(enc_r, enc_p):
    import skimage.data

    imgs = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    x = torch.nn.functional.interpolate(svgfeat.preprocess(imgs, preset="resize", size=256), size=(192, 320),
                                        mode="bilinear", align_corners=False)
    fr, fp = enc_r.encode(x), enc_p.encode(x)
    assert fr.latent.shape == (3, 392, 12, 20) and fp.latent.shape == (3, 384, 12, 20)
    assert torch.equal(fr.dino, fp.dino)
    assert enc_r.decode(fr.latent).shape == (3, 3, 192, 320)
    assert enc_p.decode(fp.latent).shape == (3, 3, 192, 320)
    # the residual of one image does not depend on its batch-mates before alignment
    with torch.no_grad():
        r1 = enc_r.raw_residual(x[1:2])
        assert (r1 - enc_r.raw_residual(x)[1:2]).abs().max() <= 1e-5


def test_grid_quirk_at_exactly_the_buffer_patch_count():
    """The official code uses its stored grid (64 wide for the released 1024 build) whenever N == grid**2."""
    torch.manual_seed(0)
    m = ResidualRoPEEncoder(image_size=64, patch_size=16, depth=1, dim=32, heads=2, mlp_dim=64).eval()
    with torch.no_grad():
        for p in (m.blocks[0].gamma_1, m.blocks[0].gamma_2):
            p.fill_(1.0)  # LayerScale's 1e-4 init would hide the attention (and so the positions)
    t = torch.arange(16.0)
    tx, ty = m.positions(2, 8)                   # 2 x 8 = 16 patches == 4 x 4 buffer: 4-wide grid
    assert torch.equal(tx, t % 4) and torch.equal(ty, t // 4)
    tx, ty = m.positions(2, 6)                   # other counts: the real 6-wide grid
    assert torch.equal(tx, torch.arange(12.0) % 6) and torch.equal(ty, torch.arange(12.0) // 6)
    assert torch.equal(torch.stack(grid_positions(64, 64)),
                       torch.stack(ResidualRoPEEncoder().positions(32, 128)))  # 512 x 2048 px
    x = torch.randn(1, 3, 32, 128)
    with torch.no_grad():
        quirk = m(x)
        m.freqs_t_x.copy_(t % 8)
        m.freqs_t_y.copy_(t // 8)
        true_grid = m(x)
    assert quirk.shape == (1, 8, 2, 8) and (quirk - true_grid).abs().max() > 1e-4


def test_released_names_resolve_through_the_hub(tmp_path):
    """svg_t2i_p_vits16plus_stage2 (pretrained=True) finds KlingTeam/SVG-T2I files in an offline HF cache."""
    import subprocess
    import sys

    from _hub_helpers import DINO_REPO, hub_env, place, timm_layout_dinov3

    timm_file = timm_layout_dinov3(_dino(), tmp_path / "src" / "model.safetensors")
    place(tmp_path, DINO_REPO, "model.safetensors", timm_file)
    place(tmp_path, "KlingTeam/SVG-T2I", "pre-trained/autoencoder/svg_autoencoder-P-stage2.ckpt",
          golden_t2i("svg_autoencoder-P_random.ckpt"))  # the optional P yaml is absent: read from the weights
    code = ("import svgfeat; e = svgfeat.load_encoder(model='svg_t2i_p_vits16plus_stage2', pretrained=True); "
            "print(e.family, e.stage, e.latent_channels, e.provenance['svg']['repo'])")
    r = subprocess.run([sys.executable, "-c", code], env=hub_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["t2i-p", "2", "384", "KlingTeam/SVG-T2I"]
