"""End-to-end evaluations on top of the shared feature cache (``svgfeat eval ...``).

Named protocols live in :mod:`svgfeat.evaluation.protocols` (importable without torch).
"""

__all__ = ["run_imagenet_eval"]


def __getattr__(name):
    if name == "run_imagenet_eval":
        from .imagenet import run_imagenet_eval

        return run_imagenet_eval
    raise AttributeError(name)
