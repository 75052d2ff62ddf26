"""Up-front memory estimate of DiT training, so a run that cannot fit is refused with the numbers instead of being
OOM-killed without a word (a 24 GB machine and ``svg_dit_xl`` at batch 256).

Estimate = parameters x 20 bytes (fp32 weights, gradients, AdamW's two moments, the EMA copy) + activations kept
for the backward pass: per sample and block ``tokens x hidden x (34 + 5 x heads x tokens / hidden)`` half-precision
bytes (the transformer activation count of Korthikanti et al. 2022), doubled for fp32.
"""

from __future__ import annotations

from ..errors import ConfigError

GB = 1 << 30
STATIC_BYTES_PER_PARAM = 20


def train_memory_bytes(params: int, depth: int, hidden: int, heads: int, tokens: int, batch: int) -> dict:
    """{"static", "activations", "total"} bytes of one training process holding ``batch`` samples."""
    static = STATIC_BYTES_PER_PARAM * params
    per_sample = depth * tokens * hidden * (34 + 5 * heads * tokens / hidden) * 2
    act = int(per_sample * batch)
    return {"static": static, "activations": act, "total": static + act}


def check_train_memory(name: str, overrides: dict, batch: int, device, available: int | None = None) -> dict:
    """Build DiT ``name`` on the meta device (no memory), estimate training at ``batch`` samples per process and
    raise ConfigError when it exceeds ``available`` bytes (None: free device memory on CUDA, the memory budget /
    MemAvailable on CPU; unknown -> no check). Returns the estimate."""
    import torch

    from ..models.build import create_model

    with torch.device("meta"):
        m = create_model(name, **overrides)
    cfg = m.config
    params = sum(p.numel() for p in m.parameters())
    tokens = int(cfg.input_size) ** 2
    est = train_memory_bytes(params, cfg.depth, cfg.hidden_size, cfg.num_heads, tokens, batch)
    dev = torch.device(device)
    if available is None:
        if dev.type == "cuda" and torch.cuda.is_available():
            available, where = torch.cuda.mem_get_info(dev)[0], f"free on {dev}"
        else:
            from ..cache.memory import memory_budget

            available, where = memory_budget(), "available now"
    else:
        where = "available"
    if available is not None and est["total"] > available:
        raise ConfigError(
            f"train-dit {name} at {batch} samples per process needs about {est['total'] / GB:.1f} GB "
            f"({params / 1e6:.0f}M parameters: weights, gradients, AdamW and EMA {est['static'] / GB:.1f} GB; "
            f"activations {est['activations'] / GB:.1f} GB), more than the {available / GB:.1f} GB {where}; use a "
            "smaller --model (svg_dit_b), a smaller --batch-size, or more GPUs (torchrun)")
    return est
