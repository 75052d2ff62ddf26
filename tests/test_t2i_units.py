"""SVG-T2I family on tiny models: export/reload round trips, family detection, decoder attention, CLI refusal."""

import pytest
import torch

import svgfeat
from svgfeat.errors import CheckpointError
from svgfeat.models.decoder import Decoder, official_ddconfig
from svgfeat.models.loading import export_official

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,family,channels", [("test_tiny_t2i_r", "t2i-r", 72), ("test_tiny_t2i_p", "t2i-p", 64),
                                                  ("test_tiny", "svg", 72)])
def test_official_export_reloads_bit_for_bit(tmp_path, name, family, channels):
    enc = svgfeat.create_model(name)
    assert enc.family == family and enc.latent_channels == channels
    ck, yml = export_official(enc, tmp_path / f"{name}.ckpt")
    for cfg in (yml, None) if family == "t2i-p" else (yml,):  # tiny residual ViTs: head count from the YAML
        back = svgfeat.load_encoder(svg=ck, svg_config=cfg)
        assert back.family == family and back.latent_channels == channels
        x = torch.randn(2, 3, 64, 96)
        torch.testing.assert_close(back.encode(x).latent, enc.encode(x).latent, rtol=0, atol=0)
        z = enc.encode(x).latent
        torch.testing.assert_close(back.decode(z), enc.decode(z), rtol=0, atol=0)


def test_p_latent_is_the_dino_channels_and_has_no_residual_group():
    enc = svgfeat.create_model("test_tiny_t2i_p")
    f = enc.encode(torch.randn(1, 3, 32, 48))
    assert f.residual is None and f.latent is f.dino and f.latent.shape == (1, 64, 2, 3)
    with pytest.raises(ValueError, match="needs an encoder with residual channels"):
        f.group("residual")
    assert enc.align is None and enc.alignment is None and enc.stage is None


def test_official_attention_placement_ignores_attn_resolutions():
    """The official decoder puts attention on the lowest level whatever attn_resolutions says."""
    for listed in ([], [16], [16, 32, 64]):
        dd = official_ddconfig(dict(z_channels=8, ch=32, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=1,
                                    attn_resolutions=listed, resolution=256))
        assert dd["attn_resolutions"] == [16]
        d = Decoder(**dd)
        assert [len(d.up[i].attn) for i in range(5)] == [0, 0, 0, 0, 2]


def test_yaml_free_r_needs_the_head_count_for_non_standard_widths(tmp_path):
    ck, _ = export_official(svgfeat.create_model("test_tiny_t2i_r"), tmp_path / "r.ckpt")
    with pytest.raises(CheckpointError, match="32-wide RoPE residual ViT cannot have 6 heads"):
        svgfeat.load_encoder(svg=ck)


def test_checkpoint_family_errors(tmp_path):
    from svgfeat.models.loading import official_state_dict

    sd = official_state_dict(svgfeat.create_model("test_tiny_t2i_r"))
    # residual weights of neither known layout
    odd = {k: v for k, v in sd.items() if k != "extra_vit.freqs"}
    torch.save({"state_dict": odd}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="neither the SVG torchvision ViT"):
        svgfeat.load_encoder(svg=tmp_path / "x.ckpt")
    # a 72-channel decoder without a residual encoder: refused clearly, not built as P
    no_res = {k: v for k, v in sd.items() if not k.startswith(("extra_vit.", "norm_vit."))}
    torch.save({"state_dict": no_res}, tmp_path / "y.ckpt")
    with pytest.raises(CheckpointError, match="72 input channels .* 64 DINO channels"):
        svgfeat.load_encoder(svg=tmp_path / "y.ckpt")


def test_train_ae_family_refusal_is_one_line(capsys):
    from svgfeat.cli import main

    for args in (["--family", "t2i-r"], ["--family", "t2i-p"], ["--model", "svg_t2i_r_vits16plus"]):
        with pytest.raises(SystemExit) as e:
            main(["train-ae", "sample:photos", "--out", "unused_out_dir", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("Error: train-ae --family t2i-") and err.count("\n") == 1
