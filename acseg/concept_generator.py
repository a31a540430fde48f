"""The Adaptive Concept Generator (ACG), docs/methods/acseg.md step 2.

k learnable prototypes, shared by all images, are turned into one image's concepts by N Transformer-decoder
blocks: cross-attention (queries = prototypes, keys/values = that image's pixels), self-attention among the
prototypes, then an MLP, each with a residual and a pre-LayerNorm. The concepts live in the pixel-feature
space, so the assignment is a plain cosine between pixels and concepts.

Unconfirmed details are arguments: the block width (the paper's is the backbone width; a narrower projection
is cheaper on a CPU), heads, MLP width and whether prototypes attend to each other.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class FixedOrderLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (the same parameters, names and initialisation) whose weight and bias gradients are summed in
    an order that does not depend on the thread count.

    torch's fused CPU kernel sums those gradients over the rows in one buffer per thread, so another thread count
    rounds them otherwise, and ACSeg's training turns a rounding difference into another generator (docs/findings/reproducibility.md,
    "Stability"). Normalising without the affine part and applying it as a product and a sum leaves those sums to
    torch's reduction kernel, which gives each output element to one thread.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, None, None, self.eps) * self.weight + self.bias


def fixed_order_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension whose gradient does not depend on the thread count.

    torch's fused CPU softmax backward rounds differently on 1 and 2 threads when a row is not a whole number of
    vectors (measured with the AVX2 kernels: every row length from 100 to 800 that is not a multiple of 8 differs, no
    multiple does). Rows of whole vectors keep the fused kernel (an even patch grid: CamVid's 768 patches); other
    rows (Stanford Background's own grid per image) take the unfused exp / sum, whose sums are torch's plain
    reductions, one output per thread.
    """
    if logits.shape[-1] % 16 == 0:  # whole vectors of 8 (AVX2) and of 16 (AVX-512) floats
        return torch.softmax(logits, dim=-1)
    exp = (logits - logits.detach().amax(dim=-1, keepdim=True)).exp()  # the max only shifts: no gradient through it
    return exp / exp.sum(dim=-1, keepdim=True)


class CrossAttention(nn.Module):
    """Multi-head attention from k concept queries to n pixels, computed in the pixel space.

    The same function and the same parameters (names, shapes, initialisation) as ``nn.MultiheadAttention``, but
    the key and value projections are folded into the queries instead of being applied to every pixel:

        softmax(q W_k^T x^T) x W_v^T  ==  softmax((q W_k) x^T) (attention-weighted x) W_v^T

    per head (the key bias shifts every logit of a query equally, so it cancels in the softmax). With k << n
    that costs O(k n w) instead of O(n w^2): the concept generator's training step is several times faster.
    ``fixed_order``: the softmax over the pixels is :func:`fixed_order_softmax`.
    """

    def __init__(self, width: int, heads: int, fixed_order: bool = False):
        super().__init__()
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.softmax = fixed_order_softmax if fixed_order else partial(torch.softmax, dim=-1)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, in its order (so seeds give the same weights)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, queries: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """queries [B, k, w], pixels [B, n, w] -> [B, k, w]."""
        b, k, w = queries.shape
        h, hd = self.heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(w)
        b_q, _, b_v = self.in_proj_bias.split(w)
        q = F.linear(queries, w_q, b_q).view(b, k, h, hd)
        q_pixel = torch.einsum("bkhd,hdw->bhkw", q, w_k.view(h, hd, w)).reshape(b, h * k, w)  # queries in the pixel space
        attention = self.softmax(q_pixel @ pixels.transpose(1, 2) / math.sqrt(hd))  # [B, h*k, n]
        attended = (attention @ pixels).view(b, h, k, w)  # attention-weighted pixels
        out = torch.einsum("bhkw,hdw->bkhd", attended, w_v.view(h, hd, w)).reshape(b, k, w) + b_v
        return self.out_proj(out)


class ConceptBlock(nn.Module):
    """One decoder block: cross-attention to pixels -> self-attention among prototypes -> MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int, self_attention: bool = True,
                 fixed_order: bool = False):
        super().__init__()
        norm = FixedOrderLayerNorm if fixed_order else nn.LayerNorm
        self.norm_cross = norm(width)
        self.cross_attn = CrossAttention(width, heads, fixed_order)
        self.self_attention = self_attention
        if self_attention:
            self.norm_self = norm(width)
            self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = norm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(), nn.Linear(mlp_width, width))

    def forward(self, concepts: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """concepts [B, k, w], pixels [B, n, w] (already normalised) -> concepts [B, k, w]."""
        q = self.norm_cross(concepts)
        concepts = concepts + self.cross_attn(q, pixels)
        if self.self_attention:
            q = self.norm_self(concepts)
            concepts = concepts + self.self_attn(q, q, q, need_weights=False)[0]
        return concepts + self.mlp(self.norm_mlp(concepts))


class ConceptGenerator(nn.Module):
    """Prototypes P [k, d] + an image's pixel features X [n, d] -> that image's concepts C [k, d].

    With ``width`` equal to the feature dimension this is the paper's design; a smaller width projects pixels
    in (one linear layer) and concepts back out (another), so the concepts still live in the feature space.
    """

    def __init__(
        self,
        feature_dim: int,
        n_prototypes: int = 5,
        depth: int = 6,
        width: int | None = None,
        heads: int = 6,
        mlp_width: int = 1024,
        self_attention: bool = True,
        prototype_scale: float = 1.0,
        fixed_order: bool = False,
    ):
        super().__init__()
        width = width or feature_dim
        if width % heads:
            raise ValueError(f"acseg.width={width} must be divisible by acseg.heads={heads}")
        self.n_prototypes = n_prototypes
        # each prototype's norm starts near prototype_scale. At 1 an image's concepts start as near copies of each
        # other (mean cosine 0.94-0.98, studies/initial_concepts.py): every winner is then decided by tiny margins,
        # and training amplifies whichever way rounding tips them. At 100 they start apart (cosine 0.01-0.02).
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, width) * (prototype_scale * width**-0.5))
        self.pixels_in = nn.Identity() if width == feature_dim else nn.Linear(feature_dim, width)
        # fixed_order: the same functions (LayerNorms, the pixels' softmax), with gradients that do not depend on the
        # thread count (FixedOrderLayerNorm, fixed_order_softmax)
        norm = FixedOrderLayerNorm if fixed_order else nn.LayerNorm
        self.norm_pixels = norm(width)
        self.blocks = nn.ModuleList(
            ConceptBlock(width, heads, mlp_width, self_attention, fixed_order) for _ in range(depth)
        )
        self.norm_out = norm(width)
        self.concepts_out = nn.Linear(width, feature_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, n, d] -> concepts [B, k, d]."""
        x = self.norm_pixels(self.pixels_in(pixels))
        concepts = self.prototypes.expand(pixels.shape[0], -1, -1)
        for block in self.blocks:
            concepts = block(concepts, x)
        return self.concepts_out(self.norm_out(concepts))
