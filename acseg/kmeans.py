"""A seeded, vectorised k-means (k-means++ init, Lloyd iterations) on torch tensors.

Used by the concept classifier (k-means over concept-region embeddings) and by the DINO k-means baseline.
``cosine=True`` is spherical k-means: points and centroids on the unit sphere, similarity = dot product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [K, d]
    labels: torch.Tensor  # [N]
    inertia: float  # sum of squared distances (euclidean) or of 1 - cos (cosine)
    inertias: list[float] = field(default_factory=list)  # every restart's, in order (the best is ``inertia``)
    restarts: list["KMeansResult"] = field(default_factory=list)  # every restart, in order (``keep_restarts``)


def _scores(x: torch.Tensor, centroids: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Higher is closer: cosine similarity, or negative squared distance."""
    if cosine:
        return x @ centroids.T
    return 2 * x @ centroids.T - (centroids * centroids).sum(-1)  # -|x-c|^2 up to the constant |x|^2


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, cosine: bool) -> torch.Tensor:
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator)
    centroids = [x[first]]
    closest = None
    for _ in range(1, k):
        c = centroids[-1]
        d = (1 - x @ c.T).squeeze(1).clamp_min(0) if cosine else ((x - c) ** 2).sum(-1)
        closest = d if closest is None else torch.minimum(closest, d)
        if closest.sum() <= 0:  # fewer distinct points than k: fall back to uniform draws
            idx = torch.randint(n, (1,), generator=generator)
        else:
            idx = torch.multinomial(closest, 1, generator=generator)
        centroids.append(x[idx])
    return torch.cat(centroids)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, cosine: bool, chunk: int) -> torch.Tensor:
    """Nearest centroid per point, in chunks so memory stays flat for large N (x already normalised)."""
    return torch.cat([_scores(part, centroids, cosine).argmax(-1) for part in x.split(chunk)])


def assign(x: torch.Tensor, centroids: torch.Tensor, cosine: bool = False, chunk: int = 65536) -> torch.Tensor:
    """Nearest centroid per point of x [N, d] -> [N]."""
    x = x.float()
    return _nearest(F.normalize(x, dim=-1) if cosine else x, centroids, cosine, chunk)


def centroid_scores(x: torch.Tensor, centroids: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """Closeness of every point to every centroid, [..., N, K]: cosine, or negative squared distance.

    Dense score maps can be upsampled before the argmax (the protocol's label-resolution prediction).
    """
    x = x.float()
    if cosine:
        return F.normalize(x, dim=-1) @ centroids.T
    return _scores(x, centroids, cosine=False) - (x * x).sum(-1, keepdim=True)


def kmeans(
    x: torch.Tensor,
    k: int,
    seed: int = 0,
    iters: int = 50,
    cosine: bool = False,
    tol: float = 1e-6,
    chunk: int = 65536,
    n_init: int = 1,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    keep_restarts: bool = False,
) -> KMeansResult:
    """Cluster x [N, d] into k clusters, optionally with per-point weights [N].

    ``n_init`` restarts from different k-means++ draws keep the one with the lowest inertia (a label-free
    choice). Deterministic for a given seed. ``dtype``: the precision of the computation (float64 makes the
    result independent of how the thread count orders float sums, at a small set's cost). ``keep_restarts``: every
    restart's result is kept in ``restarts`` (for consensus rules, :mod:`acseg.classifier`).
    """
    if k < 1 or k > x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {x.shape[0]} points")
    x = x.to(dtype)
    if cosine:
        x = F.normalize(x, dim=-1)
    w = torch.ones(x.shape[0], dtype=dtype) if weights is None else weights.to(dtype)
    weighted = x if weights is None else x * w[:, None]  # once, not per iteration (it is a large tensor)
    generator = torch.Generator().manual_seed(seed)
    best, inertias, restarts = None, [], []
    for _ in range(n_init):
        result = _lloyd(x, w, weighted, k, generator, iters, cosine, tol, chunk)
        inertias.append(result.inertia)
        if keep_restarts:
            restarts.append(result)
        if best is None or result.inertia < best.inertia:
            best = result
    # a new result rather than the winning restart's own: that one is also in ``restarts``
    return KMeansResult(best.centroids, best.labels, best.inertia, inertias, restarts)


def cluster_means(weighted: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted mean [k, d] of each cluster's points and its mass [k], from the points times their weights
    ``weighted`` [N, d], the weights ``w`` [N] and the labels [N]; an empty cluster has mass 0 and mean 0."""
    sums = torch.zeros(k, weighted.shape[1], dtype=weighted.dtype, device=weighted.device).index_add_(0, labels, weighted)
    mass = torch.zeros(k, dtype=weighted.dtype, device=weighted.device).index_add_(0, labels, w)
    return sums / mass.clamp_min(1e-12)[:, None], mass


def _lloyd(x, w, weighted, k, generator, iters, cosine, tol, chunk) -> KMeansResult:
    centroids = kmeans_plus_plus(x, k, generator, cosine)
    for _ in range(iters):
        labels = _nearest(x, centroids, cosine, chunk)
        new, mass = cluster_means(weighted, w, labels, k)
        empty = mass == 0
        if empty.any():  # re-seed empty clusters on random points instead of letting them die
            new[empty] = x[torch.randint(x.shape[0], (int(empty.sum()),), generator=generator)]
        if cosine:
            new = F.normalize(new, dim=-1)
        shift = (new - centroids).pow(2).sum().item()
        centroids = new
        if shift < tol:
            break
    labels = _nearest(x, centroids, cosine, chunk)
    if cosine:
        inertia = (w * (1 - (x * centroids[labels]).sum(-1))).sum().item()
    else:
        inertia = (w * (x - centroids[labels]).pow(2).sum(-1)).sum().item()
    return KMeansResult(centroids, labels, inertia)
