"""Shared fixtures: the golden directory, real sample images, tiny encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


def golden_path(name: str) -> Path:
    p = GOLDEN / name
    if not p.exists():
        pytest.skip(f"golden fixture {p} is absent (../shared/golden is provided in CI and dev sessions)")
    return p


def golden_t2i(name: str) -> Path:
    """A file of ../shared/golden-t2i (SVG-T2I fixtures), with golden_path's skip/fail rule."""
    return golden_path(f"../golden-t2i/{name}")


@pytest.fixture(scope="session")
def golden():
    return golden_path


@pytest.fixture(scope="session")
def golden_encoder():
    """The full-size SVG encoder with the golden random weights (batch alignment)."""
    import svgfeat

    return svgfeat.load_encoder(dinov3=golden_path("dinov3_vits16plus_random.pth"),
                                svg=golden_path("svg_ae_shared.ckpt"), svg_config=golden_path("svg_ae_shared.yaml"))


@pytest.fixture(scope="session")
def tiny():
    import svgfeat

    return svgfeat.create_model("test_tiny")


@pytest.fixture(scope="session")
def photos():
    """Real photographs (scikit-image), uint8 HWC."""
    import skimage.data

    return [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]


def normalise(images_uint8: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster with one intra-op thread on a shared 2-core machine; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """Single-threaded faiss: stable timings on a shared 2-core machine; restored afterwards."""
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is a default dependency; CI installs it")
    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)
