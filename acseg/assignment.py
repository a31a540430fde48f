"""Pixel-to-concept assignment (docs/methods/acseg.md, step 3).

S_ic = cos(x_i, c_c): no softmax, no temperature. Training uses the clipped S+ = max(0, S); inference takes
argmax_c S_ic, so prototypes that win no pixel vanish and the number of concepts adapts per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_assignment(pixels: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """S = cos(pixels, concepts). pixels [..., n, d], concepts [..., k, d] -> [..., n, k]."""
    return F.normalize(pixels, dim=-1) @ F.normalize(concepts, dim=-1).transpose(-1, -2)


def clipped_assignment(similarity: torch.Tensor) -> torch.Tensor:
    """S+ = max(0, S), the soft assignment the modularity loss is computed on."""
    return similarity.clamp_min(0)


def hard_assignment(similarity: torch.Tensor) -> torch.Tensor:
    """a_i = argmax_c S_ic. [..., n, k] -> [..., n] (long)."""
    return similarity.argmax(dim=-1)


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """The winning channel of every pixel of score maps [B, C, H, W] -> [B, H, W] (the first one on ties).

    ``max(dim=1).indices`` rather than ``argmax(1)``: the same answer, but torch's CPU argmax over a strided
    dimension is ~9x slower, and at label resolution it was half of an evaluation.
    """
    return scores.max(dim=1).indices


def concepts_per_image(assignment: torch.Tensor, n_prototypes: int) -> torch.Tensor:
    """How many prototypes win at least one pixel, per image: the adaptive concept count m <= k.

    assignment [B, n] (hard ids) -> [B] (long).
    """
    counts = F.one_hot(assignment, n_prototypes).sum(dim=-2)
    return (counts > 0).sum(dim=-1)
