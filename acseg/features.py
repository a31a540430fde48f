"""Frozen ViT backbone -> patch features (docs/methods/acseg.md, step 1).

Wraps any timm VisionTransformer: the last layer's output tokens or the last layer's attention keys, the
[CLS] token, and the last layer's [CLS] attention to every patch (for the background split on VOC). timm keeps
no attention maps, so keys and attention come from a forward hook on the last block's ``attn.qkv``.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_TYPES = ("tokens", "keys")


class ViTFeatures(nn.Module):
    """images [B, 3, H, W] in [0, 1] -> dict of features [B, h, w, d] (the chosen type), every type under its
    own name (``tokens``, ``keys``: one forward pass gives both), cls [B, d], cls_attention [B, heads, h, w].

    H and W must be multiples of the patch size (the model must be built with ``dynamic_img_size=True`` or at
    that fixed size).
    """

    def __init__(self, vit: nn.Module, feature_type: str = "tokens", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        if feature_type not in FEATURE_TYPES:
            raise ValueError(f"unknown feature type {feature_type!r}; choose one of {FEATURE_TYPES}")
        self.vit = vit.eval().requires_grad_(False)
        self.feature_type = feature_type
        self.patch_size = _patch_size(vit)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._qkv: torch.Tensor | None = None
        vit.blocks[-1].attn.qkv.register_forward_hook(self._keep_qkv)

    def _keep_qkv(self, module, inputs, output):
        self._qkv = output

    @property
    def dim(self) -> int:
        return self.vit.embed_dim

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
        h, w = height // p, width // p
        tokens = self.vit.forward_features((images - self.mean) / self.std)
        prefix = self.vit.num_prefix_tokens
        attn = self.vit.blocks[-1].attn
        heads = attn.num_heads
        q, k, _ = self._qkv.reshape(b, tokens.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)  # [B, heads, N, hd]
        q, k = attn.q_norm(q), attn.k_norm(k)
        cls_attention = ((q[:, :, :1] * attn.scale) @ k.transpose(-1, -2)).softmax(-1)[:, :, 0, prefix:]
        by_type = {
            "tokens": tokens[:, prefix:].reshape(b, h, w, -1),
            "keys": k[:, :, prefix:].transpose(1, 2).reshape(b, h, w, -1),
        }
        self._qkv = None
        return {
            "features": by_type[self.feature_type],
            **by_type,
            "cls": tokens[:, 0],
            "cls_attention": cls_attention.reshape(b, heads, h, w),
        }


def _patch_size(vit: nn.Module) -> int:
    size = vit.patch_embed.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def centred_pixels(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Cached patch features [B, h, w, d] -> pixels [B, n, d] in the mean's precision (float32, or float64 where a
    model trains in it), minus the dataset's mean feature (zeros when a method does not centre). Every method
    prepares its input with this one function."""
    b, h, w, d = features.shape
    return features.reshape(b, h * w, d).to(mean.dtype) - mean
