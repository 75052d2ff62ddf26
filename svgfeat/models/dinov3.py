"""Frozen DINOv3 backbone, built on timm's EVA implementation (``*_dinov3_qkvb`` variants).

The ``_qkvb`` variants keep DINOv3's learned q/v biases (the plain variants drop them, which is off
by ~0.5 against Meta's model). Key conversion Meta -> timm is timm's ``checkpoint_filter_fn``;
:func:`timm_to_meta` is the inverse, used when exporting to the official layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# DINOv3 variants svgfeat knows: short name -> timm model name
DINOV3_VARIANTS = {
    "vit_small": "vit_small_patch16_dinov3_qkvb",
    "vit_small_plus": "vit_small_plus_patch16_dinov3_qkvb",
    "vit_base": "vit_base_patch16_dinov3_qkvb",
    "vit_large": "vit_large_patch16_dinov3_qkvb",
    "vit_huge_plus": "vit_huge_plus_patch16_dinov3_qkvb",
}


@dataclass
class BackboneOutput:
    """What one backbone pass returns (B images, h x w patch grid, C channels, R registers).

    patch:     [B, C, h, w] final-norm patch tokens
    cls:       [B, C] final-norm class token
    registers: [B, R, C] final-norm register (storage) tokens
    layers:    {block index: (cls [B, C], patch [B, C, h, w])} normed intermediate outputs
    """

    patch: torch.Tensor
    cls: torch.Tensor
    registers: torch.Tensor
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]


class DinoV3Backbone(nn.Module):
    """DINOv3 ViT wrapper. ``variant`` is a key of :data:`DINOV3_VARIANTS` or a timm model name.

    ``timm_overrides`` (embed_dim, depth, num_heads, ...) shrink the model for tests.
    """

    def __init__(self, variant: str = "vit_small_plus", **timm_overrides):
        super().__init__()
        import timm

        self.variant = variant
        self.timm_name = DINOV3_VARIANTS.get(variant, variant)
        if "dinov3" not in self.timm_name:
            raise ValueError(f"not a DINOv3 timm model: {self.timm_name!r}; expected one of {sorted(DINOV3_VARIANTS)}")
        self.timm_overrides = dict(timm_overrides)
        self.model = timm.create_model(self.timm_name, pretrained=False, num_classes=0, **timm_overrides)
        self.embed_dim: int = self.model.embed_dim
        self.depth: int = len(self.model.blocks)
        self.patch_size: int = self.model.patch_embed.patch_size[0]
        self.num_registers: int = self.model.num_prefix_tokens - 1
        self.num_prefix_tokens: int = self.model.num_prefix_tokens

    def resolve_layers(self, layers) -> list[int]:
        """Normalise a layer spec: int n -> last n blocks; sequence -> block indices (negatives allowed)."""
        if layers is None or layers == 0:
            return []
        if isinstance(layers, int):
            if not 0 < layers <= self.depth:
                raise ValueError(f"layers={layers}: expected 1..{self.depth} (last n blocks)")
            return list(range(self.depth - layers, self.depth))
        out = []
        for i in layers:
            j = i + self.depth if i < 0 else i
            if not 0 <= j < self.depth:
                raise ValueError(f"layer index {i} out of range for a {self.depth}-block model")
            out.append(j)
        return sorted(set(out))

    def forward(self, x: torch.Tensor, layers=None) -> BackboneOutput:
        """x: [B, 3, H, W] ImageNet-normalised, H and W multiples of the patch size."""
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}")
        h, w = H // p, W // p
        want = self.resolve_layers(layers)
        final, inter = self.model.forward_intermediates(
            x, indices=sorted(set(want) | {self.depth - 1}), norm=True, output_fmt="NLC",
            return_prefix_tokens=True, intermediates_only=False,
        )
        # final: [B, P + h*w, C] normed sequence (P = 1 + R prefix tokens)
        P = self.num_prefix_tokens
        tokens = final[:, P:]
        patch = tokens.transpose(1, 2).reshape(B, self.embed_dim, h, w)
        layers_out = {}
        idx = sorted(set(want) | {self.depth - 1})
        for i, (sp, pre) in zip(idx, inter):
            if i in want:
                layers_out[i] = (pre[:, 0], sp.transpose(1, 2).reshape(B, self.embed_dim, h, w))
        return BackboneOutput(patch=patch, cls=final[:, 0], registers=final[:, 1:P], layers=layers_out)

    # ------------------------------------------------------------------ weights
    def load_meta_or_timm_state(self, state_dict: dict) -> dict:
        """Convert a Meta-layout (``storage_tokens``) or timm-layout state dict to this model's keys."""
        if "storage_tokens" in state_dict:
            from timm.models.eva import checkpoint_filter_fn

            return checkpoint_filter_fn(state_dict, self.model)
        return dict(state_dict)


def dinov3_rope_periods(head_dim: int, base: float = 100.0) -> torch.Tensor:
    """DINOv3's stored ``rope_embed.periods`` buffer: [head_dim // 4] fp32."""
    n = head_dim // 4
    return base ** (2 * torch.arange(n, dtype=torch.float32) / (head_dim // 2))


def timm_to_meta(sd: dict, num_heads: int) -> dict:
    """Inverse of timm's DINOv3 filter: timm EVA keys -> Meta's official key layout.

    Bookkeeping entries that timm drops are regenerated: ``qkv.bias`` gets a zero k part,
    ``bias_mask`` is [1..1, 0..0, 1..1], ``rope_embed.periods`` follows the DINOv3 formula and
    ``mask_token`` (pretraining only) is zero.
    """
    out = {}
    dim = sd["cls_token"].shape[-1]
    for k, v in sd.items():
        if k.endswith(".q_bias"):
            vb = sd[k.replace(".q_bias", ".v_bias")]
            base = k[: -len(".q_bias")]
            out[base + ".qkv.bias"] = torch.cat([v, torch.zeros_like(v), vb])
            out[base + ".qkv.bias_mask"] = torch.cat(
                [torch.ones(dim), torch.zeros(dim), torch.ones(dim)]).to(device=v.device, dtype=torch.float32)
            continue
        if k.endswith(".v_bias"):
            continue
        nk = (k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
              .replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2").replace("mlp.fc2", "mlp.w3"))
        out[nk] = v
    head_dim = dim // num_heads
    dev = sd["cls_token"].device
    out["rope_embed.periods"] = dinov3_rope_periods(head_dim).to(dev)
    out["mask_token"] = torch.zeros(1, dim, dtype=sd["cls_token"].dtype, device=dev)
    return out

