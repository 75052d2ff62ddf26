"""Exception types. Every error a user can trigger derives from :class:`SvgfeatError`.

Errors about inputs (:class:`ConfigError`, :class:`DataError`) are also ``ValueError``s, as scikit-learn's
estimator contract and Python convention expect of a bad argument value.

The CLI turns these into a one-line message and a non-zero exit code (no traceback).
"""


class SvgfeatError(Exception):
    """Base class of every user-facing svgfeat error."""


class CheckpointError(SvgfeatError):
    """A weight file is unreadable, unsafe, truncated, of the wrong architecture or missing keys."""


class ConfigError(SvgfeatError, ValueError):
    """A configuration (YAML/JSON/arguments) is invalid."""


class CacheError(SvgfeatError):
    """A feature cache is missing, incomplete, corrupt or does not match what was requested."""


class DataError(SvgfeatError, ValueError):
    """A dataset spec or an input image cannot be used."""


class MissingDependencyError(SvgfeatError, ImportError):
    """An optional dependency (faiss, mmseg, ...) is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'svgfeat[{extra}]'"
        )
        self.package = package
        self.extra = extra
