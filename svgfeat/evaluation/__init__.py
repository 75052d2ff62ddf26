"""End-to-end evaluations on top of the shared feature cache (``svgfeat eval ...``)."""

from .imagenet import run_imagenet_eval

__all__ = ["run_imagenet_eval"]
