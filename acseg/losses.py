"""The modularity loss of ACSeg and the variants the ablations compare (docs/methods/acseg.md, step 4).

Per image, on the fully connected graph of its patches:

    A_ij = max(0, cos(x_i, x_j))          affinity                    -> :func:`affinity`
    k_i  = sum_j A_ij,  2m = sum_ij A_ij  degrees and total weight
    W_ij = A_ij - k_i k_j / 2m            Newman's modularity matrix  -> :func:`modularity_matrix`
    D_ij = max_c S+_ic S+_jc              shared-concept intensity    -> :func:`concept_intensity`
    L    = -(1 / 2m) sum_ij W_ij D_ij                                 -> :func:`modularity_loss`

A, W and m are constants: only the concepts carry gradient. Every function is batched over a leading image
dimension B. Which edges A keeps is a :class:`Graph` (the paper's reading is the dense graph; an outside audit found
its modularity optimum coarse and a k-NN-sparsified one semantic, so the graph is an option):

    dense      A_ij = max(0, cos(x_i, x_j))
    knn        A_ij kept where j is among i's k most affine pixels or i among j's (symmetrised) -> :func:`knn_sparsified`
    threshold  A_ij kept where A_ij > t                                                  -> :func:`thresholded`
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


def knn_sparsified(affinity: torch.Tensor, k: int) -> torch.Tensor:
    """The affinity [B, n, n] with only the edges from each pixel to its k most affine others, symmetrised (an edge
    stays if either end chose it); self-loops stay as in the dense graph."""
    k = min(k + 1, affinity.shape[-1])  # the pixel itself is its own most affine
    chosen = torch.zeros_like(affinity, dtype=torch.bool).scatter_(-1, affinity.topk(k, dim=-1).indices, True)
    return affinity * (chosen | chosen.transpose(-1, -2))


def thresholded(affinity: torch.Tensor, threshold: float) -> torch.Tensor:
    """The affinity [B, n, n] with only the edges above ``threshold``."""
    return affinity * (affinity > threshold)


class Graph:
    """Which edges of the pixel graph the loss keeps: ``dense``, ``knn`` (``k`` neighbours) or ``threshold``."""

    KINDS = ("dense", "knn", "threshold")

    def __init__(self, kind: str = "dense", k: int = 0, threshold: float = 0.0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown graph {kind!r}; choose one of {self.KINDS}")
        self.kind, self.k, self.threshold = kind, k, threshold

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, n, d] -> the graph's affinity [B, n, n]."""
        a = affinity(features)
        if self.kind == "knn":
            return knn_sparsified(a, self.k)
        if self.kind == "threshold":
            return thresholded(a, self.threshold)
        return a


DENSE = Graph()


def modularity_matrix(affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Newman's modularity matrix W = A - k k^T / 2m, and 2m. [B, n, n] -> ([B, n, n], [B])."""
    degree = affinity.sum(dim=-1)
    two_m = degree.sum(dim=-1)
    expected = degree.unsqueeze(-1) * degree.unsqueeze(-2) / two_m[:, None, None]
    return affinity - expected, two_m


def concept_intensity(assignment: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """D_ij = max_c S+_ic S+_jc, the intensity with which pixels i and j share a concept.

    With ``temperature`` tau > 0 the max becomes a smooth one (:func:`smooth_concept_intensity`).

    assignment [B, n, k] (already clipped, S+) -> [B, n, n]. The winning concept c*_ij is found without
    gradient, then D is rebuilt as S+_{i c*} S+_{j c*} (the same float product, so the same values): the
    gradient is the max's (it flows to the winner only; the two differ only at exact ties), but autograd keeps
    [B, n, n] tensors instead of [B, n, n, k] ones, which made the backward pass most of a training step.
    Memory is still B*n*n*k for the max; callers sample pixels when that is too much.
    """
    if temperature > 0:
        return smooth_concept_intensity(assignment, temperature)
    with torch.no_grad():
        # max(-1).indices, not argmax(-1): the same first-maximum index, ~30% faster over a short last dim on a CPU
        winner = (assignment.unsqueeze(-2) * assignment.unsqueeze(-3)).max(dim=-1).indices  # c*_ij, [B, n, n]
    mine = assignment.gather(-1, winner)  # S+_{i c*_ij}
    theirs = assignment.gather(-1, winner.transpose(-1, -2)).transpose(-1, -2)  # S+_{j c*_ij}
    return mine * theirs


def smooth_concept_intensity(assignment: torch.Tensor, temperature: float) -> torch.Tensor:
    """D_ij = sum_c softmax_c(P_ijc / tau) P_ijc with P_ijc = S+_ic S+_jc: the max over concepts replaced by its
    softmax-weighted mean, which tends to it as tau -> 0 and never exceeds it.

    Why: with the hard max the winning concept of a pair switches discontinuously, and so does the gradient; some
    pair of the 65k a step sees is always near such a tie, so a float-rounding difference (another thread count or
    processor) flips one and the training takes another path. The smooth max has a continuous gradient; measured,
    it keeps such trainings together only until the concepts differentiate (docs/findings/reproducibility.md).
    assignment [B, n, k] (S+) -> [B, n, n].
    """
    shared = assignment.unsqueeze(-2) * assignment.unsqueeze(-3)  # P, [B, n, n, k]
    return (torch.softmax(shared / temperature, dim=-1) * shared).sum(dim=-1)


def modularity(intensity: torch.Tensor, modularity_mat: torch.Tensor, two_m: torch.Tensor) -> torch.Tensor:
    """Q = (1 / 2m) sum_ij W_ij D_ij per image, [B]. With a hard 0/1 co-membership D this is Newman's Q."""
    return (modularity_mat * intensity).sum(dim=(-1, -2)) / two_m


def modularity_loss(features: torch.Tensor, assignment: torch.Tensor, graph: Graph = DENSE,
                    intensity_temperature: float = 0.0) -> torch.Tensor:
    """ACSeg's loss, L = -(1/2m) sum_ij W_ij D_ij, averaged over the batch.

    features [B, n, d] define the graph (no gradient); assignment [B, n, k] is S+ (gradient flows here);
    intensity_temperature > 0: D's max over concepts is a smooth one (:func:`smooth_concept_intensity`).
    """
    with torch.no_grad():
        w, two_m = modularity_matrix(graph(features))
    return -modularity(concept_intensity(assignment, intensity_temperature), w, two_m).mean()


def soft_modularity_loss(features: torch.Tensor, similarity: torch.Tensor, temperature: float = 0.1,
                         graph: Graph = DENSE) -> torch.Tensor:
    """Variant: D_ij = sum_c p_ic p_jc with p = softmax(S / tau), the usual soft relaxation of modularity."""
    with torch.no_grad():
        w, two_m = modularity_matrix(graph(features))
    p = torch.softmax(similarity / temperature, dim=-1)
    return -modularity(p @ p.transpose(-1, -2), w, two_m).mean()


def no_degree_loss(features: torch.Tensor, assignment: torch.Tensor, graph: Graph = DENSE,
                   intensity_temperature: float = 0.0) -> torch.Tensor:
    """Variant without the degree (null-model) term: W = A - mean(A), plain affinity agreement.

    Subtracting the mean affinity keeps the trivial "one concept for everything" from winning outright while
    dropping Newman's k_i k_j / 2m expectation, which is the ablation's point.
    """
    with torch.no_grad():
        a = graph(features)
        two_m = a.sum(dim=(-1, -2))
        w = a - a.mean(dim=(-1, -2), keepdim=True)
    return -modularity(concept_intensity(assignment, intensity_temperature), w, two_m).mean()


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


def concept_loss(name: str, features: torch.Tensor, similarity: torch.Tensor, graph: Graph = DENSE,
                 **kwargs) -> torch.Tensor:
    """Dispatch by name to one of :data:`LOSSES`: ``features`` [B, n, d] make the ``graph``, ``similarity``
    [B, n, k] is S. The distortion loss ignores the graph."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    fn, takes = LOSSES[name]
    x = clipped_assignment(similarity) if takes == "clipped" else similarity
    if name == "distortion":
        return fn(features, x)
    return fn(features, x, graph=graph, **kwargs)
