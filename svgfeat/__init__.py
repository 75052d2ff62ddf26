"""svgfeat: SVG features (frozen DINOv3 + aligned residual channels) and the heads that share them.

The public names below are imported lazily so that ``import svgfeat`` stays cheap and optional
dependencies (faiss, mmseg) are only imported when used.
"""

from importlib import import_module

from ._version import __version__

_LAZY = {
    # core (issue A)
    "load_encoder": "svgfeat.models.build",
    "SVGEncoder": "svgfeat.models.svg",
    "SVGFeatures": "svgfeat.models.svg",
    "preprocess": "svgfeat.data.transforms",
    "list_models": "svgfeat.models.build",
    "create_model": "svgfeat.models.build",
    # cache / extraction (issue B)
    "open_cache": "svgfeat.cache",
    "FeatureCache": "svgfeat.cache",
    "from_arrays": "svgfeat.cache",
    "extract": "svgfeat.extraction",
    "open_dataset": "svgfeat.data",
    # heads (issues C, D, E)
    "LinearProbe": "svgfeat.heads.probe",
    "KNNClassifier": "svgfeat.heads.knn",
    "LogRegSweep": "svgfeat.heads.logreg",
    "run_imagenet_eval": "svgfeat.evaluation",
    "FaissIndex": "svgfeat.heads.retrieval",
    "PatchIndex": "svgfeat.heads.patch_retrieval",
    "LinearSegHead": "svgfeat.heads.segmentation",
    # generation (issue F)
    "load_dit": "svgfeat.models.build",
    "sample": "svgfeat.generation.sampling",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'svgfeat' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
