"""How the numbers are computed: one object, made in one place, recorded in every output.

:class:`Numerics` holds the precision (``fp32`` | ``bf16`` | ``fp16`` autocast), the device type autocast runs
on, the TF32 policy for float32 matmuls/convolutions on CUDA and the ``torch.compile`` flag. Extraction,
DiT and autoencoder training, the heads, ``eval``, ``pca`` and ``serve`` take one; manifests, checkpoint
configs and ``results.json`` carry its :meth:`Numerics.record`.

:meth:`Numerics.for_device` is the only constructor that checks the machine. A request that cannot run as
recorded is refused with one :class:`~svgfeat.errors.ConfigError` line, never downgraded silently:

- ``cuda`` without CUDA (or a missing ``cuda:N``), ``mps``/``xpu`` without the backend;
- a precision the device cannot autocast to (bf16 on a GPU without bf16, fp16 on the CPU, bf16 on mps);
- TF32 on anything but CUDA.

Nothing here changes a global torch flag at import; :meth:`Numerics.autocast` sets the TF32 flags for the
duration of its block and restores them.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
# precisions each device type autocasts to (fp32 = no autocast)
SUPPORTED = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16"), "mps": ("fp32", "fp16"),
             "xpu": ("fp32", "bf16", "fp16")}


def _available(dev: torch.device) -> str | None:
    """None when ``dev`` can be used here, else why not (one clause)."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "this machine has no CUDA device (torch.cuda.is_available() is False)"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return f"this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}"
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            return "the MPS backend is not available here (torch.backends.mps.is_available() is False)"
    elif dev.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            return "no Intel XPU is available here (torch.xpu.is_available() is False)"
    return None


def _bf16_ok(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


def parse_device(device) -> torch.device:
    """``device`` (str or torch.device) -> torch.device, refused with one line when unknown or absent here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r}: expected cpu, cuda, cuda:N, mps or xpu") from None
    if dev.type not in DEVICE_TYPES:
        raise ConfigError(f"device {device!r}: svgfeat runs on {', '.join(DEVICE_TYPES)}")
    why = _available(dev)
    if why:
        raise ConfigError(f"device {device!r}: {why}; use --device cpu (device='cpu')")
    return dev


@dataclass(frozen=True)
class Numerics:
    """Precision, autocast device type, TF32 policy and compile flag of one run (see the module doc)."""

    precision: str = "fp32"
    device_type: str = "cpu"
    tf32: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.device_type not in DEVICE_TYPES:
            raise ConfigError(f"device type {self.device_type!r}: expected one of {', '.join(DEVICE_TYPES)}")
        if self.precision not in SUPPORTED[self.device_type]:
            raise ConfigError(f"precision {self.precision} cannot run on {self.device_type} (it autocasts to "
                              f"{', '.join(p for p in SUPPORTED[self.device_type] if p != 'fp32')} only); "
                              "use --precision fp32")
        if self.tf32 and self.device_type != "cuda":
            raise ConfigError(f"tf32 applies to CUDA float32 matmuls only, not to {self.device_type}")
        if not isinstance(self.compile, bool) or not isinstance(self.tf32, bool):
            raise ConfigError("tf32 and compile must be booleans")

    @classmethod
    def for_device(cls, device="cpu", precision: str = "fp32", tf32: bool = False,
                   compile: bool = False) -> "Numerics":
        """The numerics of a run on ``device``, checked against this machine (see the module doc)."""
        dev = parse_device(device)
        num = cls(precision=precision, device_type=dev.type, tf32=bool(tf32), compile=bool(compile))
        if precision == "bf16" and not _bf16_ok(dev):
            raise ConfigError(f"precision bf16: {device} does not support bfloat16; use --precision fp32 "
                              "(or fp16)")
        return num

    @classmethod
    def from_record(cls, record: dict | None) -> "Numerics":
        """The object back from :meth:`record` (unknown keys ignored; missing = defaults)."""
        r = record or {}
        return cls(precision=r.get("precision", "fp32"), device_type=r.get("device_type", "cpu"),
                   tf32=bool(r.get("tf32", False)), compile=bool(r.get("compile", False)))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32 (no autocast)."""
        return DTYPES.get(self.precision)

    @property
    def has_float64(self) -> bool:
        """Whether the device computes in float64 (mps does not: float64 sums stay on the CPU)."""
        return self.device_type != "mps"

    def autocast(self):
        """Context for the forward passes: autocast to the precision on the right device type (never
        ``autocast("cpu")`` for a GPU), and the TF32 policy on CUDA; both undone on exit."""
        stack = contextlib.ExitStack()
        if self.device_type == "cuda":
            stack.enter_context(_tf32(self.tf32))
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device_type, dtype=self.autocast_dtype))
        return stack

    def maybe_compile(self, fn):
        """``torch.compile(fn)`` when the compile flag is set, else ``fn``."""
        return torch.compile(fn) if self.compile else fn

    def to_device(self, module: torch.nn.Module, device) -> torch.nn.Module:
        """``module.to(device)``; on a device without float64 (mps) its float64 buffers (e.g. the four fixed
        alignment statistics, used in float32 anyway) become float32 first instead of failing the move."""
        if not self.has_float64:
            for m in module.modules():
                for name, b in m._buffers.items():
                    if b is not None and b.dtype == torch.float64:
                        m._buffers[name] = b.float()
        return module.to(device)

    def require_float64(self, what: str) -> None:
        """Refuse (one line) a computation that needs float64 on the device when the device has none."""
        if not self.has_float64:
            raise ConfigError(f"{what} needs float64 on the device, which {self.device_type} does not have; "
                              "use --device cpu or cuda")

    def record(self) -> dict:
        """JSON-safe record for manifests, checkpoint configs and results.json."""
        import timm

        return {**asdict(self), "autocast_dtype": str(self.autocast_dtype).replace("torch.", "")
                if self.autocast_dtype else None, "torch": torch.__version__, "timm": timm.__version__}


@contextlib.contextmanager
def _tf32(allow: bool):
    mm, cd = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(allow)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = mm, cd
