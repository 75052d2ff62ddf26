"""Shared fixtures: the golden directory, real sample images, tiny encoders.

Helpers for inputs that CI must have (under ``CI=true`` a missing one FAILS the test instead of skipping):
- ``golden_path(name)``: a file of ../shared/golden (names may reach ../shared/reference via "../");
- ``has_golden(name)``: bool, for ``pytest.mark.skipif`` (``needs_golden(name)`` is that marker, and
  under CI=true the marked test runs and fails on the missing file);
- ``require_extra(module, extra)``: import an optional extra (e.g. ``require_extra("mmseg")``), skip
  without it -- fail under CI=true.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str):
    """Skip locally; fail under CI=true (CI provides every golden file and extra)."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: required inputs must be present)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def golden_path(name: str) -> Path:
    p = GOLDEN / name
    if not p.exists():
        missing(f"golden fixture {p} is absent (../shared/golden is provided in CI and dev sessions)")
    return p


def has_golden(name: str) -> bool:
    return (GOLDEN / name).exists()


def needs_golden(*names: str):
    """skipif marker for tests that read golden files directly; never skips under CI=true (the test
    then fails on the missing file, or call golden_path inside it)."""
    absent = [n for n in names if not has_golden(n)]
    return pytest.mark.skipif(bool(absent) and not ON_CI, reason=f"golden fixture(s) {absent} absent at {GOLDEN}")


def require_extra(module: str, extra: str | None = None):
    """Import an optional extra's module; skip when it is not installed (fail under CI=true)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{module} is an optional extra: pip install 'svgfeat[{extra or module}]' ({e})")


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
def golden_digits(tmp_path_factory):
    """The sample digits (train / val) through the full-size SVG encoder with the golden random weights,
    at 64 px, cached once per session: (train FeatureCache, val FeatureCache)."""
    import svgfeat

    w = dict(dinov3=golden_path("dinov3_vits16plus_random.pth"), svg=golden_path("svg_ae_shared.ckpt"),
             svg_config=golden_path("svg_ae_shared.yaml"))
    root = tmp_path_factory.mktemp("golden_digits")
    kw = dict(size=64, batch_size=128, groups=("cls", "pooled", "latent"), progress=False, **w)
    return (svgfeat.extract("sample:digits/train", root / "train", **kw),
            svgfeat.extract("sample:digits/val", root / "val", **kw))


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
    faiss = require_extra("faiss")

    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA devices (skipped without them)")
