"""The modularity loss of ACSeg and the variants the ablations compare (docs/method.md, step 4).

Per image, on the fully connected graph of its patches:

    A_ij = max(0, cos(x_i, x_j))          affinity                    -> :func:`affinity`
    k_i  = sum_j A_ij,  2m = sum_ij A_ij  degrees and total weight
    W_ij = A_ij - k_i k_j / 2m            Newman's modularity matrix  -> :func:`modularity_matrix`
    D_ij = max_c S+_ic S+_jc              shared-concept intensity    -> :func:`concept_intensity`
    L    = -(1 / 2m) sum_ij W_ij D_ij                                 -> :func:`modularity_loss`

A, W and m are constants: only the concepts carry gradient. Every function is batched over a leading image
dimension B.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from acseg.assignment import clipped_assignment


def affinity(features: torch.Tensor) -> torch.Tensor:
    """A_ij = max(0, cos(x_i, x_j)). features [B, n, d] -> [B, n, n]."""
    unit = F.normalize(features, dim=-1)
    return (unit @ unit.transpose(-1, -2)).clamp_min(0)


def modularity_matrix(affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Newman's modularity matrix W = A - k k^T / 2m, and 2m. [B, n, n] -> ([B, n, n], [B])."""
    degree = affinity.sum(dim=-1)
    two_m = degree.sum(dim=-1)
    expected = degree.unsqueeze(-1) * degree.unsqueeze(-2) / two_m[:, None, None]
    return affinity - expected, two_m


def concept_intensity(assignment: torch.Tensor) -> torch.Tensor:
    """D_ij = max_c S+_ic S+_jc, the intensity with which pixels i and j share a concept.

    assignment [B, n, k] (already clipped, S+) -> [B, n, n]. The winning concept c*_ij is found without
    gradient, then D is rebuilt as S+_{i c*} S+_{j c*} (the same float product, so the same values): the
    gradient is the max's (it flows to the winner only; the two differ only at exact ties), but autograd keeps
    [B, n, n] tensors instead of [B, n, n, k] ones, which made the backward pass most of a training step.
    Memory is still B*n*n*k for the max; callers sample pixels when that is too much.
    """
    with torch.no_grad():
        # max(-1).indices, not argmax(-1): the same first-maximum index, ~30% faster over a short last dim on a CPU
        winner = (assignment.unsqueeze(-2) * assignment.unsqueeze(-3)).max(dim=-1).indices  # c*_ij, [B, n, n]
    mine = assignment.gather(-1, winner)  # S+_{i c*_ij}
    theirs = assignment.gather(-1, winner.transpose(-1, -2)).transpose(-1, -2)  # S+_{j c*_ij}
    return mine * theirs


def modularity(intensity: torch.Tensor, modularity_mat: torch.Tensor, two_m: torch.Tensor) -> torch.Tensor:
    """Q = (1 / 2m) sum_ij W_ij D_ij per image, [B]. With a hard 0/1 co-membership D this is Newman's Q."""
    return (modularity_mat * intensity).sum(dim=(-1, -2)) / two_m


def modularity_loss(features: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """ACSeg's loss, L = -(1/2m) sum_ij W_ij D_ij, averaged over the batch.

    features [B, n, d] define the graph (no gradient); assignment [B, n, k] is S+ (gradient flows here).
    """
    with torch.no_grad():
        w, two_m = modularity_matrix(affinity(features))
    return -modularity(concept_intensity(assignment), w, two_m).mean()


def soft_modularity_loss(features: torch.Tensor, similarity: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Variant: D_ij = sum_c p_ic p_jc with p = softmax(S / tau), the usual soft relaxation of modularity."""
    with torch.no_grad():
        w, two_m = modularity_matrix(affinity(features))
    p = torch.softmax(similarity / temperature, dim=-1)
    return -modularity(p @ p.transpose(-1, -2), w, two_m).mean()


def no_degree_loss(features: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Variant without the degree (null-model) term: W = A - mean(A), plain affinity agreement.

    Subtracting the mean affinity keeps the trivial "one concept for everything" from winning outright while
    dropping Newman's k_i k_j / 2m expectation, which is the ablation's point.
    """
    with torch.no_grad():
        a = affinity(features)
        two_m = a.sum(dim=(-1, -2))
        w = a - a.mean(dim=(-1, -2), keepdim=True)
    return -modularity(concept_intensity(assignment), w, two_m).mean()


def distortion_loss(features: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Variant: k-means-style distortion, 1 - max_c cos(x_i, c_c), averaged over pixels and images."""
    return (1 - similarity.amax(dim=-1)).mean()


# name -> (function, which input it takes: "clipped" S+ or raw "similarity" S)
LOSSES: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "modularity": (modularity_loss, "clipped"),
    "soft_modularity": (soft_modularity_loss, "similarity"),
    "no_degree": (no_degree_loss, "clipped"),
    "distortion": (distortion_loss, "similarity"),
}


def concept_loss(name: str, features: torch.Tensor, similarity: torch.Tensor, **kwargs) -> torch.Tensor:
    """Dispatch by name to one of :data:`LOSSES`; the distortion loss ignores the graph."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    fn, takes = LOSSES[name]
    x = clipped_assignment(similarity) if takes == "clipped" else similarity
    if name == "distortion":
        return fn(features, x)
    return fn(features, x, **kwargs)
