"""Concept generators: a batch of images' patch features -> one concept id per patch.

ACSeg's claim is about this step: its Adaptive Concept Generator (ACG) partitions an image better than
clustering each image on its own. Each generator here is a pure function of prepared pixels [B, n, d] (the
cached features as the concept step sees them, e.g. centred) returning concept ids [B, n] in [0, S):

- :func:`acg_concepts`             the ACG: argmax_c cos(x_i, c_c) over the image's concepts (docs/methods/acseg.md 2-3)
- :func:`kmeans_concepts`          per-image spherical k-means with a fixed k
- :func:`adaptive_kmeans_concepts` per-image spherical k-means, k chosen per image by a label-free criterion:
                                   Newman's modularity Q of the partition on the image's affinity graph (what
                                   ACSeg's loss maximises) or the eigengap of the graph's normalised Laplacian
- :func:`spectral_concepts`        per-image spectral clustering of the patch affinity (Deep Spectral Methods'
                                   segments, :mod:`acseg.spectral`), optionally with the colour affinity

Whatever follows (the concept classifier, retrieval) sees only the ids, so every generator is judged the same way.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

from acseg.assignment import cosine_assignment, hard_assignment
from acseg.batched_kmeans import batched_kmeans
from acseg.losses import affinity, modularity, modularity_matrix
from acseg.spectral import eigengap_count, laplacian_eigenvectors

Criterion = Literal["modularity", "eigengap"]


def acg_concepts(generator: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ACSeg's concepts: the trained :class:`acseg.concept_generator.ConceptGenerator` turns its prototypes into the
    image's concepts, every pixel takes its most similar one. pixels [B, n, d] -> [B, n] in [0, prototypes)."""
    return hard_assignment(cosine_assignment(pixels, generator(pixels)))


def kmeans_concepts(pixels: torch.Tensor, k: int, seed: int = 0, iters: int = 50, n_init: int = 1) -> torch.Tensor:
    """Per-image spherical k-means into k segments (the paper's k-means baseline). [B, n, d] -> [B, n]."""
    return batched_kmeans(pixels, k, seed=seed, iters=iters, n_init=n_init, cosine=True).labels


def partition_modularity(modularity_mat: torch.Tensor, two_m: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Newman's Q of each image's hard partition ids [B, n] on its graph (:func:`acseg.losses.modularity_matrix`
    of the affinity max(0, cos)) -> [B]: docs/methods/acseg.md step 4 with a 0/1 co-membership."""
    return modularity((ids[:, :, None] == ids[:, None, :]).float(), modularity_mat, two_m)


def adaptive_kmeans_concepts(pixels: torch.Tensor, k_min: int, k_max: int, criterion: Criterion = "modularity",
                             seed: int = 0, iters: int = 50, n_init: int = 1,
                             graph: Callable[[torch.Tensor], torch.Tensor] = affinity) -> torch.Tensor:
    """Per-image spherical k-means with k in [k_min, k_max] chosen per image without labels. [B, n, d] -> [B, n].

    ``modularity``: every k is run and each image keeps the partition of highest Q (the smaller k on ties);
    ``eigengap``: k = the eigengap of the normalised Laplacian of the image's graph (:func:`eigengap_count` over
    its k_max + 1 smallest eigenvalues), clipped to the range, then one k-means. ``graph``: pixels [B, n, d] ->
    affinity [B, n, n], the dense max(0, cos) by default (a sparser graph, e.g. the one ACSeg's loss is given,
    makes Q's optimum finer).
    """
    if not 1 <= k_min <= k_max:
        raise ValueError(f"adaptive k-means needs 1 <= k_min <= k_max, got {k_min}..{k_max}")
    if criterion == "eigengap":
        values, _ = laplacian_eigenvectors(graph(pixels.float()), k_max + 1)
        k = eigengap_count(values).clamp(k_min, k_max)
        return batched_kmeans(pixels, k, seed=seed, iters=iters, n_init=n_init, cosine=True).labels
    if criterion != "modularity":
        raise ValueError(f"unknown criterion {criterion!r}; choose modularity or eigengap")
    w, two_m = modularity_matrix(graph(pixels.float()))
    candidates = torch.stack([kmeans_concepts(pixels, k, seed, iters, n_init) for k in range(k_min, k_max + 1)])
    q = torch.stack([partition_modularity(w, two_m, ids) for ids in candidates])  # [k values, B]
    best = q.argmax(0)  # the first maximum: the smallest k among equals
    return candidates[best, torch.arange(pixels.shape[0], device=pixels.device)]


def spectral_concepts(pixels: torch.Tensor, n_segments: int | None, n_eigenvectors: int, seed: int = 0,
                      iters: int = 50, n_init: int = 1, normalised: bool = True,
                      extra_affinity: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image spectral clustering (Deep Spectral Methods' multi-region segments): euclidean k-means on each
    patch's coordinates in the first ``n_eigenvectors`` eigenvectors of the Laplacian of
    W = max(0, cos) + ``extra_affinity`` (e.g. lambda times :func:`acseg.spectral.knn_colour_affinity`).

    ``n_segments``: per image; None: each image's own k from the eigengap of those eigenvalues
    (:func:`acseg.spectral.eigengap_count`, at most n_eigenvectors - 1), and then its k-means sees only its first
    k eigenvectors, as classical spectral clustering (k eigenvectors for k clusters; DSM's adaptive mode keeps
    all K, whose later, noisier eigenvectors weigh as much in the distances). [B, n, d] -> [B, n]. The
    eigenvectors do not depend on the seed, the k-means on them does.
    """
    w = affinity(pixels.float())
    if extra_affinity is not None:
        w = w + extra_affinity
    values, vectors = laplacian_eigenvectors(w, n_eigenvectors, normalised)
    if n_segments is not None:
        return spectral_segments(vectors, min(n_segments, pixels.shape[1]), seed, iters, n_init)
    k = eigengap_count(values)
    kept = torch.arange(vectors.shape[-1], device=vectors.device) < k[:, None]  # [B, K]
    return spectral_segments(vectors * kept[:, None, :], k, seed, iters, n_init)


def spectral_segments(eigenvectors: torch.Tensor, n_segments: int | torch.Tensor, seed: int = 0, iters: int = 50,
                      n_init: int = 1) -> torch.Tensor:
    """The k-means step of spectral clustering: eigenvectors [B, n, K] (rows = the patches' spectral coordinates)
    -> segments [B, n]. Euclidean, as DSM's scikit-learn KMeans."""
    return batched_kmeans(eigenvectors, n_segments, seed=seed, iters=iters, n_init=n_init, cosine=False).labels


def segment_scores(segments: torch.Tensor, n_segments: int, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel scores of the segments of a patch grid at ``size``: each segment's indicator map, upsampled
    bilinearly. segments [B, h, w] -> [B, S, H, W]; their argmax is every pixel's segment, with boundaries as
    smooth as an upsampled score map's (the same for every generator, whatever scores it has or lacks)."""
    maps = F.one_hot(segments, n_segments).permute(0, 3, 1, 2).float()
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
