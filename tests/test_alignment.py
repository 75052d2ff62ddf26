"""Distribution alignment: the official batch formula, fixed mode batch-independence, streaming statistics."""

import numpy as np
import pytest
import torch

import svgfeat
from svgfeat.models.align import AlignmentStats, DistributionAlign


def test_batch_formula_hand_computed():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, 5, 2, 2, generator=g) * 2 + 1
    r = torch.randn(3, 2, 2, 2, generator=g) * 0.3 - 4
    out = DistributionAlign("batch")(d, r)
    dn, rn = d.numpy(), r.numpy()
    mu_d = np.mean([dn[:, c].mean() for c in range(5)])
    s_d = np.mean([dn[:, c].std(ddof=1) for c in range(5)])
    mu_r = np.mean([rn[:, c].mean() for c in range(2)])
    s_r = np.mean([rn[:, c].std(ddof=1) for c in range(2)])
    ref = (rn - mu_r) / (s_r + 1e-6) * s_d + mu_d
    assert np.abs(out.numpy() - ref).max() < 1e-5


def test_statistics_are_detached():
    d = torch.randn(2, 4, 2, 2)
    r = torch.randn(2, 3, 2, 2, requires_grad=True)
    DistributionAlign("batch")(d, r).sum().backward()
    # gradient of (r - mu)/sigma * s_d with detached stats is the constant s_d/(sigma+eps)
    assert torch.allclose(r.grad, r.grad.flatten()[0].expand_as(r.grad))


def test_fixed_alignment_independent_of_batch_mates(photos):
    enc = svgfeat.create_model("test_tiny")
    x = svgfeat.preprocess(photos, size=64)
    acc = AlignmentStats()
    with torch.no_grad():
        acc.update(enc.backbone(x).patch, enc.raw_residual(x))
    enc.set_alignment("fixed", acc.compute())
    together = enc.encode(x).latent
    alone = torch.cat([enc.encode(x[i:i + 1]).latent for i in range(len(x))])
    assert torch.equal(together, alone)
    # and in batch mode they differ
    enc.set_alignment("batch")
    assert not torch.allclose(enc.encode(x).latent, torch.cat([enc.encode(x[i:i + 1]).latent for i in range(len(x))]))


def test_streaming_stats_equal_whole_batch_and_are_batch_size_independent():
    g = torch.Generator().manual_seed(1)
    d, r = torch.randn(10, 6, 3, 3, generator=g), torch.randn(10, 8, 3, 3, generator=g) * 3
    one = AlignmentStats()
    one.update(d, r)
    parts = AlignmentStats()
    for i in range(0, 10, 3):
        parts.update(d[i:i + 3], r[i:i + 3])
    a, b = one.compute(), parts.compute()
    assert a == pytest.approx(b, rel=1e-12)
    from svgfeat.models.align import scalar_stats

    mu, s = scalar_stats(d)
    assert a["mu_dino"] == pytest.approx(float(mu), abs=1e-6) and a["sigma_dino"] == pytest.approx(float(s), rel=1e-5)


def test_fixed_without_stats_is_a_clear_error():
    enc = svgfeat.create_model("test_tiny").set_alignment("fixed")
    with pytest.raises(RuntimeError, match="needs statistics"):
        enc.encode(torch.randn(1, 3, 64, 64))
