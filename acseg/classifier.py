"""The concept classifier (docs/method.md, step 5): per-image concepts -> dataset-wide classes.

Each concept region is represented by the mean of its pixel features (the region-mean variant); k-means over
the regions of a whole split gives K class centroids; every concept then takes the class of its nearest
centroid and every pixel the class of its concept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from acseg.kmeans import KMeansResult, kmeans


def region_embeddings(
    features: torch.Tensor, assignment: torch.Tensor, n_prototypes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of each concept's region.

    features [B, n, d], assignment [B, n] (hard concept ids) -> (embeddings [B, k, d], pixel counts [B, k]).
    Concepts that win no pixel get a zero embedding and count 0.
    """
    one_hot = F.one_hot(assignment, n_prototypes).to(features.dtype)  # [B, n, k]
    counts = one_hot.sum(dim=1)
    sums = one_hot.transpose(1, 2) @ features
    return sums / counts.clamp_min(1).unsqueeze(-1), counts


def fit_concept_classifier(
    embeddings: torch.Tensor,
    n_classes: int,
    seed: int = 0,
    cosine: bool = True,
    iters: int = 100,
    n_init: int = 1,
    weights: torch.Tensor | None = None,
) -> KMeansResult:
    """k-means over the region embeddings [M, d] of a split (only regions that exist) into K classes.

    ``weights`` (e.g. region sizes) make large regions count more than slivers.
    """
    return kmeans(embeddings, n_classes, seed=seed, iters=iters, cosine=cosine, n_init=n_init, weights=weights)


def classify_concepts(embeddings: torch.Tensor, centroids: torch.Tensor, cosine: bool = True) -> torch.Tensor:
    """Class id of each concept embedding [..., d] -> [...] (nearest class centroid)."""
    flat = embeddings.reshape(-1, embeddings.shape[-1]).float()
    if cosine:
        scores = F.normalize(flat, dim=-1) @ centroids.T
    else:
        scores = -torch.cdist(flat, centroids)
    return scores.argmax(-1).reshape(embeddings.shape[:-1])
