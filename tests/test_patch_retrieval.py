"""PatchIndex: planted-region retrieval with patch coordinates, aggregation, subsampling, save/load, caches."""

import numpy as np
import pytest
import torch
from _retrieval_helpers import photo_folder, tiny_cache

import svgfeat
from svgfeat.errors import CacheError, ConfigError, DataError
from svgfeat.heads.patch_retrieval import PatchIndex, PatchSource, load_any

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def planted():
    """60 random 32-d patch grids 8x8; image 7's region rows 1:3, cols 2:5 is copied (+ small noise) into
    image 42 at rows 4:6, cols 0:3."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((60, 32, 8, 8)).astype(np.float32)
    G[42, :, 4:6, 0:3] = G[7, :, 1:3, 2:5] + 0.05 * rng.standard_normal((32, 2, 3)).astype(np.float32)
    return G


def test_region_query_finds_source_and_planted_copy_with_coordinates(planted):
    idx = PatchIndex().fit(planted, paths=[f"img{i}.png" for i in range(60)], labels=np.arange(60) % 3)
    assert idx.index_.ntotal_ == 60 * 64 and idx.grid_ == (8, 8)
    q = PatchIndex.region_vectors(planted[7], (1, 3, 2, 5))
    assert q.shape == (6, 32)
    hits = idx.search(q, k=3)
    assert [h.row for h in hits[:2]] == [7, 42]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[1].score > 0.99 > hits[2].score
    # image 42's matching patches sit where the region was planted, each paired with its query patch
    h = hits[1]
    assert h.path == "img42.png" and h.label == 0
    assert {tuple(p) for p in h.patches[:6]} == {(r, c) for r in (4, 5) for c in (0, 1, 2)}
    for (r, c), qi in zip(h.patches[:6], h.query_patches[:6]):
        qr, qc = divmod(int(qi), 3)  # query patch (qr, qc) of the 2x3 region
        assert (r - 4, c) == (qr, qc)
    assert np.all(np.diff(h.patch_scores) <= 0)
    # 'sum' rewards images matching every patch of the region; torch queries and grids are accepted
    hs = idx.search(torch.from_numpy(q), k=3, aggregate="sum")
    assert [x.row for x in hs[:2]] == [7, 42] and hs[0].score == pytest.approx(6.0, abs=1e-4)
    assert hs[1].score > 5.9 and hs[2].score < 3
    assert idx.search(q, k=2, exclude=[7])[0].row == 42
    d = hits[1].to_dict()
    assert d["id"] == 42 and d["patches"][0] in [[4, 0], [4, 1], [4, 2], [5, 0], [5, 1], [5, 2]]


def test_subsampling_is_seeded_and_batch_independent(planted):
    s2 = PatchIndex(stride=2).fit(planted)
    assert s2.index_.ntotal_ == 60 * 16
    keys = s2.index_.keys_ % 64
    r, c = np.divmod(keys, 8)
    assert (r % 2 == 0).all() and (c % 2 == 0).all()
    a = PatchIndex(fraction=0.3, seed=1, batch_size=64).fit(planted)
    b = PatchIndex(fraction=0.3, seed=1, batch_size=100_000).fit(torch.from_numpy(planted))
    c_ = PatchIndex(fraction=0.3, seed=2).fit(planted)
    np.testing.assert_array_equal(a.index_.keys_, b.index_.keys_)
    assert not np.array_equal(a.index_.keys_, c_.index_.keys_)
    assert abs(a.index_.ntotal_ / (60 * 64) - 0.3) < 0.05
    src = PatchSource(planted, "dino", 1, 0.3, 1)
    assert src.n == a.index_.ntotal_
    with pytest.raises(ConfigError, match="fraction"):
        PatchIndex(fraction=1.5).fit(planted)
    with pytest.raises(DataError, match=r"\[n, C, h, w\]"):
        PatchIndex().fit(planted[:, :, 0])


def test_patch_ann_and_save_load(planted, tmp_path):
    idx = PatchIndex("HNSW16", ef_search=128).fit(planted)
    q = PatchIndex.region_vectors(planted[7], (1, 3, 2, 5))
    hits = idx.search(q, k=2)
    assert [h.row for h in hits] == [7, 42]
    p = idx.save(tmp_path / "p.faiss")
    back = load_any(p)
    assert isinstance(back, PatchIndex) and back.grid_ == (8, 8) and back.index_.search_params() == {"efSearch": 128}
    again = back.search(q, k=2)
    assert [h.row for h in again] == [7, 42]
    np.testing.assert_array_equal(again[1].patches, hits[1].patches)
    from svgfeat.heads.retrieval import FaissIndex

    g = FaissIndex().fit(planted.mean(axis=(2, 3)))
    g.save(tmp_path / "g.faiss")
    with pytest.raises(CacheError, match="not a patch index"):
        PatchIndex.load(tmp_path / "g.faiss")
    l2 = PatchIndex(metric="l2").fit(planted)
    assert l2.search(q, k=1)[0].row == 7
    with pytest.raises(ConfigError, match="sum"):
        l2.search(q, aggregate="sum")


def test_patch_index_over_a_cache_and_image_queries(tmp_path):
    cache = tiny_cache("test_tiny")
    idx = PatchIndex(group="dino").fit(cache)
    h, w = idx.grid_
    assert (h, w) == (4, 4) and idx.index_.ntotal_ == len(cache) * 16
    hits = idx.search_cache(cache, 3, region=(0, 2, 0, 2), k=3)
    assert hits[0].row == 3 and hits[0].path == cache.paths[3]
    assert {tuple(p) for p in hits[0].patches[:4]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    enc = svgfeat.create_model("test_tiny")
    img = photo_folder() / "imgs" / cache.paths[5]
    got = idx.search_images(img, enc, region=(1, 3, 1, 3), k=2)
    assert got[0].row == 5 and got[0].score > 0.99
    with pytest.raises(CacheError, match="test_tiny_dino"):
        idx.search_images(img, svgfeat.create_model("test_tiny_dino"), k=2)
    with pytest.raises(CacheError, match="encoder mismatch"):
        idx.search_cache(tiny_cache("test_tiny_dino"), 0, k=2)
    with pytest.raises(ConfigError, match="region"):
        idx.search_cache(cache, 0, region=(0, 9, 0, 1))
    lat = PatchIndex(group="latent", stride=2).fit(cache)
    assert lat.index_.dim_ == 72 and lat.index_.ntotal_ == len(cache) * 4


def test_fixed_alignment_encoder_adopts_the_index_statistics():
    """A latent (residual-carrying) patch index from a fixed-alignment cache: a fresh encoder asked for 'fixed'
    alignment takes the statistics stored with the index, so an image finds itself exactly; 'batch' is refused."""
    cache = tiny_cache("test_tiny", alignment="fixed")
    idx = PatchIndex(group="latent").fit(cache)
    img = photo_folder() / "imgs" / cache.paths[2]
    enc = svgfeat.load_encoder(model="test_tiny", alignment="fixed")
    hits = idx.search_images(img, enc, k=2)
    assert hits[0].row == 2 and hits[0].score > 0.999
    assert enc.align.fixed_stats_dict() == cache.encoder_spec["fixed_stats"]
    with pytest.raises(CacheError, match="alignment: index has 'fixed', encoder has 'batch'"):
        idx.search_images(img, svgfeat.load_encoder(model="test_tiny"), k=2)


def test_patch_index_default_is_memory_appropriate(planted, monkeypatch):
    """The default factory is 'auto': Flat for a few patches, never Flat at ImageNet size; an explicit Flat that
    cannot fit is refused up front, naming the patch count and the ways out."""
    from svgfeat.heads import index_factory as fac

    idx = PatchIndex().fit(planted)
    assert idx.index_.factory_ == "Flat" and idx.index_.info()["factory_requested"] == "auto"
    n = 1_281_167 * 64  # ImageNet train at stride 2 on a 16x16 grid
    assert fac.estimate_memory("Flat", n, 384) > 125e9  # ~126 GB (117 GiB)
    assert not fac.auto_factory(n, 384, "4GB")[0].startswith("Flat")
    with pytest.raises(ConfigError, match=r"patch index \(60 images x 64 patches\) 'Flat' over 3840 x 32 .*"
                                          r"--auto.*--stride / --fraction"):
        PatchIndex("Flat", max_memory="100KB").fit(planted)
    monkeypatch.setattr(fac, "available_memory", lambda: 100_000)
    with pytest.raises(ConfigError, match="memory available now"):
        PatchIndex("Flat").fit(planted)
