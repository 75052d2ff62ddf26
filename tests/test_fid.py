"""FID: the Frechet distance math against closed forms and scipy, and the Inception plumbing (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from svgfeat.cli.fid import fid
from svgfeat.evaluation.fid import (
    INCEPTION_FILE,
    InceptionFeatures,
    build_fid_inception,
    frechet_distance,
    gaussian_stats,
    iter_images,
    sample_stats,
    trace_sqrt_product,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: avoid oversubscription


def test_one_dimensional_closed_form():
    # FID of N(m1, v1) and N(m2, v2) = (m1-m2)^2 + (sqrt v1 - sqrt v2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    d = frechet_distance(np.zeros(3), np.diag([1.0, 4, 9]), np.ones(3), np.diag([4.0, 4, 1]))
    assert d == pytest.approx(3 + 1 + 0 + 4)
    assert frechet_distance(np.ones(5), np.eye(5), np.ones(5), np.eye(5)) == pytest.approx(0, abs=1e-10)


def test_matches_scipy_sqrtm():
    import scipy.linalg as scipy_linalg  # scipy comes with scikit-learn (a hard dependency)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 64)), rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.5
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert trace_sqrt_product(s1, s1) == pytest.approx(np.trace(s1), rel=1e-8)
    sing = np.cov(a[:10], rowvar=False)  # singular: the eigen square-root path
    ref_sing = np.trace(scipy_linalg.sqrtm(sing @ sing).real)
    assert trace_sqrt_product(sing, sing) == pytest.approx(ref_sing, rel=1e-6)
    assert np.allclose(s1, np.cov(a, rowvar=False))


def test_rank_deficient_covariances_are_fine():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1  # N < D: singular sigmas
    d = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert np.isfinite(d) and d > 0


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    torch.manual_seed(0)
    net = build_fid_inception()
    with torch.no_grad():  # random BN statistics so activations neither vanish nor explode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    p = tmp_path_factory.mktemp("inc") / INCEPTION_FILE
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, p)  # like pytorch-fid's file: a plain state dict (with fc 1008)
    return p


def test_inception_plumbing(random_inception):
    ext = InceptionFeatures(random_inception)
    assert ext.net.fc.out_features == 1008
    assert isinstance(ext.net.Mixed_7c, torch.nn.Module) and ext.net.Mixed_7c.max_pool
    x = torch.rand(2, 3, 64, 48)
    f = ext(x)
    assert f.shape == (2, 2048) and f.dtype == np.float64 and np.isfinite(f).all() and (f >= 0).all()
    assert np.array_equal(f[:1], ext(x[:1]))  # per-image (eval BN), batch independent
    assert np.abs(f[0] - f[1]).max() > 0  # random deep nets nearly collapse inputs, but not exactly


def test_inception_strict_keys(tmp_path, random_inception):
    sd = torch.load(random_inception, weights_only=True)
    sd.pop("Mixed_6b.branch1x1.conv.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="Mixed_6b.branch1x1.conv.weight"):
        InceptionFeatures(tmp_path / "bad.pth")


def test_fid_cli(tmp_path, random_inception, monkeypatch, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    runner = CliRunner()
    r = runner.invoke(fid, [str(imgs), str(ref), "--inception", str(random_inception), "--batch-size", "2",
                            "--save-stats", str(tmp_path / "s.npz")])
    assert r.exit_code == 0, r.output
    value = float(r.output.split("FID ")[1].split()[0])
    assert np.isfinite(value) and value > 0
    mu, sigma, n = sample_stats(tmp_path / "s.npz", None)  # precomputed stats are reusable as SAMPLES
    assert n is None and mu.shape == (2048,) and sigma.shape == (2048, 2048)
    np.savez(tmp_path / "arr.npz", arr_0=np.stack([np.asarray(Image.open(imgs / f"{i}.png")) for i in range(3)]))
    a = torch.cat(list(iter_images(imgs, 2)))  # ADM .npz input reads the same pixels as the folder
    b = torch.cat(list(iter_images(tmp_path / "arr.npz", 2)))
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    Image.fromarray(rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(imgs / "3.png")
    assert [tuple(x.shape) for x in iter_images(imgs, 8)] == [(3, 3, 32, 32), (1, 3, 40, 24)]  # mixed sizes
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    from svgfeat.cli import main

    with pytest.raises(SystemExit) as e:  # one line on stderr, exit 2 (the library raises CheckpointError)
        main(["fid", str(imgs), str(ref)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and INCEPTION_FILE in err and "never downloads" in err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1
