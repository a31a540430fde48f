"""k-means of many small point sets at once: each image's patches clustered on their own, a batch of images per call.

Per-image clustering (the concept generators ACSeg is compared with, Deep Spectral Methods' segments) is one
k-means per image; looping :func:`acseg.kmeans.kmeans` over images spends its time in Python. Here a batch of
images is one [B, n, d] tensor: the k-means++ draws, the Lloyd steps and the restarts are batched, and image b
uses its own k_b <= K clusters (the other centroid slots are masked), so images with different k share the calls.
The same algorithm as :mod:`acseg.kmeans` (k-means++ seeding, Lloyd steps, empty clusters re-seeded on random
points, the restart of lowest inertia kept), chosen per image.

Random draws come from one seeded CPU generator (uniforms, turned into draws by inverse CDF), so a seed gives the
same clustering on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class BatchedKMeansResult:
    labels: torch.Tensor  # [B, n] cluster of every point, < k_b
    centroids: torch.Tensor  # [B, K, d] (slots >= k_b unused)
    inertia: torch.Tensor  # [B] sum of squared distances (euclidean) or of 1 - cos (cosine)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


def _draw(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``weights`` [B, n] >= 0, drawn with probability proportional to its weight (uniformly
    in a row of zeros) -> [B]."""
    weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, torch.ones_like(weights))
    cdf = weights.cumsum(-1)
    u = _uniform((weights.shape[0], 1), generator, weights.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(weights.shape[1] - 1)


def _distance(x: torch.Tensor, centroid: torch.Tensor, cosine: bool) -> torch.Tensor:
    """x [B, n, d], centroid [B, d] -> [B, n]: 1 - cos (x and centroid on the unit sphere) or squared distance."""
    if cosine:
        return (1 - (x * centroid[:, None]).sum(-1)).clamp_min(0)
    return (x - centroid[:, None]).pow(2).sum(-1)


def batched_kmeans_plus_plus(x: torch.Tensor, n_slots: int, generator: torch.Generator, cosine: bool) -> torch.Tensor:
    """k-means++ seeding of every image at once: x [B, n, d] -> centroids [B, n_slots, d]."""
    b, n, _ = x.shape
    rows = torch.arange(b, device=x.device)
    first = (_uniform((b,), generator, x.device) * n).long().clamp_max(n - 1)
    centroids = [x[rows, first]]
    closest = None
    for _ in range(1, n_slots):
        d = _distance(x, centroids[-1], cosine)
        closest = d if closest is None else torch.minimum(closest, d)
        centroids.append(x[rows, _draw(closest, generator)])
    return torch.stack(centroids, 1)


def _scores(x: torch.Tensor, centroids: torch.Tensor, active: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Higher is closer, [B, n, K]; slots beyond an image's k never win."""
    if cosine:
        scores = x @ centroids.transpose(1, 2)
    else:  # -|x - c|^2 up to the constant |x|^2
        scores = 2 * x @ centroids.transpose(1, 2) - centroids.pow(2).sum(-1)[:, None]
    return scores.masked_fill(~active[:, None], float("-inf"))


def _lloyd(x, active, generator, iters, cosine, tol) -> BatchedKMeansResult:
    b, n, _ = x.shape
    n_slots = active.shape[1]
    rows = torch.arange(b, device=x.device)[:, None]
    centroids = batched_kmeans_plus_plus(x, n_slots, generator, cosine)
    scale = x.var(1).mean(-1)  # [B]: the stopping rule is relative to each image's spread (scikit-learn's)
    for _ in range(iters):
        one_hot = F.one_hot(_scores(x, centroids, active, cosine).argmax(-1), n_slots).to(x.dtype)  # [B, n, K]
        mass = one_hot.sum(1)
        new = one_hot.transpose(1, 2) @ x / mass.clamp_min(1)[..., None]
        empty = (mass == 0) & active
        if empty.any():  # re-seeded on random points of the same image instead of dying
            points = (_uniform((b, n_slots), generator, x.device) * n).long().clamp_max(n - 1)
            new = torch.where(empty[..., None], x[rows, points], new)
        if cosine:
            new = F.normalize(new, dim=-1)
        new = torch.where(active[..., None], new, centroids)
        converged = bool(((new - centroids).pow(2).sum((1, 2)) <= tol * scale).all())
        centroids = new
        if converged:
            break
    labels = _scores(x, centroids, active, cosine).argmax(-1)
    nearest = torch.gather(centroids, 1, labels[..., None].expand_as(x))
    inertia = (1 - (x * nearest).sum(-1)).sum(-1) if cosine else (x - nearest).pow(2).sum((1, 2))
    return BatchedKMeansResult(labels, centroids, inertia)


def batched_kmeans(
    x: torch.Tensor,
    k: int | torch.Tensor,
    seed: int = 0,
    iters: int = 50,
    n_init: int = 1,
    cosine: bool = False,
    tol: float = 1e-4,
) -> BatchedKMeansResult:
    """Cluster each image's points x [B, n, d] into its own k_b clusters (``k``: one int for all, or [B]).

    ``n_init`` restarts; each image keeps its restart of lowest inertia. ``cosine``: spherical k-means (points and
    centroids on the unit sphere). Lloyd steps stop after ``iters``, or once every image's centroids moved by at
    most ``tol`` times the mean variance of its points' coordinates (scikit-learn's rule: spectral coordinates are
    tiny, an absolute tolerance would stop them at once). Deterministic for a given seed and batch.
    """
    b, n, _ = x.shape
    ks = torch.as_tensor(k, dtype=torch.long).expand(b).to(x.device)
    if b == 0 or int(ks.min()) < 1 or int(ks.max()) > n:
        raise ValueError(f"batched k-means needs 1 <= k <= points per image ({n}), got k={ks.tolist()}")
    x = x.float()
    if cosine:
        x = F.normalize(x, dim=-1)
    active = torch.arange(int(ks.max()), device=x.device) < ks[:, None]  # [B, K]
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        result = _lloyd(x, active, generator, iters, cosine, tol)
        if best is None:
            best = result
            continue
        better = result.inertia < best.inertia
        best = BatchedKMeansResult(torch.where(better[:, None], result.labels, best.labels),
                                   torch.where(better[:, None, None], result.centroids, best.centroids),
                                   torch.where(better, result.inertia, best.inertia))
    return best
