"""STEGO (Hamilton et al., ICLR 2022), the baseline ACSeg is judged against, on frozen backbone features.

The recipe (docs/protocol.md): a segmentation head (linear + non-linear 1x1 branches, summed) maps features to
codes; the correspondence loss pulls codes together where the backbone's features correlate above a shift and
pushes them apart below it, between an image and itself, a k-NN neighbour and a random other image; a cluster
probe learns centroids on the detached codes. Everything here works on points [B, P, d] (a 1x1 convolution is a
linear layer per point), so the same modules run on sampled points in training and on whole maps at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    """codes = linear(dropout(f)) + mlp(dropout(f)): STEGO's 1x1-conv projection of features to code space.

    Dropout zeroes whole feature channels per image (STEGO's Dropout2d), drawn separately for each branch.
    """

    def __init__(self, feature_dim: int, code_dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.linear = nn.Linear(feature_dim, code_dim)
        self.nonlinear = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, code_dim))
        self.dropout = nn.Dropout1d(dropout)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x.transpose(1, 2)).transpose(1, 2)  # [B, P, d]: one mask per (image, channel)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, P, d] -> [B, P, code_dim]."""
        return self.linear(self._drop(features)) + self.nonlinear(self._drop(features))


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every point of ``a`` [B, P, c] with every point of ``b`` [B, Q, c] -> [B, P, Q]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)


def feature_correlation(a: torch.Tensor, b: torch.Tensor, pointwise: bool = True) -> torch.Tensor:
    """F: the backbone's feature correlation. ``pointwise`` removes each point's mean correlation with the other
    image (so a point correlated with everything is not a positive for everything), keeping the global mean."""
    fd = correlation(a, b)
    if pointwise:
        mean = fd.mean()
        fd = fd - fd.mean(-1, keepdim=True)
        fd = fd - fd.mean() + mean
    return fd


def correspondence_loss(feats_a: torch.Tensor, feats_b: torch.Tensor, codes_a: torch.Tensor, codes_b: torch.Tensor,
                        shift: float, pointwise: bool = True, zero_clamp: bool = True) -> torch.Tensor:
    """STEGO's loss between two sets of points: mean of -clamp(Cd, 0) * (F - shift).

    F (feature correlation) is the target; Cd (code correlation) is what is learned. Pairs whose features
    correlate above ``shift`` pull their codes together, pairs below it push them apart.
    """
    fd = feature_correlation(feats_a, feats_b, pointwise)
    cd = correlation(codes_a, codes_b)
    if zero_clamp:
        cd = cd.clamp_min(0)
    return -(cd * (fd - shift)).mean()


@dataclass(frozen=True)
class CorrespondenceWeights:
    """Weights and shifts of the three terms (self, k-NN neighbour, random image)."""

    w_self: float
    w_knn: float
    w_rand: float
    shift_self: float
    shift_knn: float
    shift_rand: float


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (the random image is never the image
    itself); rejection sampling takes about e tries."""
    if n < 2:
        raise ValueError("a random other image needs a batch of at least 2")
    while True:
        perm = torch.randperm(n, generator=generator)
        if not (perm == torch.arange(n)).any():
            return perm


def stego_loss(feats: torch.Tensor, codes: torch.Tensor, feats_knn: torch.Tensor, codes_knn: torch.Tensor,
               feats_second: torch.Tensor, codes_second: torch.Tensor, weights: CorrespondenceWeights,
               neg_samples: int = 5, pointwise: bool = True, zero_clamp: bool = True,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The total correspondence loss on sampled points, and its three terms.

    ``feats``/``codes`` [B, P, .]: the batch at a first set of points; ``*_knn``: each image's k-NN neighbour
    at a second set; ``*_second``: the batch itself at the second set, from which the random other images are
    drawn (``neg_samples`` deranged permutations). The self term correlates the first set with itself.
    """
    w = weights
    self_term = correspondence_loss(feats, feats, codes, codes, w.shift_self, pointwise, zero_clamp)
    knn_term = correspondence_loss(feats, feats_knn, codes, codes_knn, w.shift_knn, pointwise, zero_clamp)
    rand_terms = [torch.zeros((), device=feats.device)]
    for _ in range(neg_samples):
        perm = derangement(feats.shape[0], generator).to(feats.device)
        rand_terms.append(correspondence_loss(feats, feats_second[perm], codes, codes_second[perm], w.shift_rand,
                                              pointwise, zero_clamp))
    rand_term = torch.stack(rand_terms[1:]).mean() if neg_samples else rand_terms[0]
    total = w.w_self * self_term + w.w_knn * knn_term + w.w_rand * rand_term
    return {"loss": total, "self": self_term, "knn": knn_term, "rand": rand_term}


class ClusterProbe(nn.Module):
    """Learnable centroids on the unit sphere; a point's cluster is its most similar centroid.

    Trained on detached codes by maximising each point's similarity to its assigned centroid (an online
    spherical k-means), so it never shapes the codes.
    """

    def __init__(self, code_dim: int, n_clusters: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(n_clusters, code_dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each code to each centroid: [..., c] -> [..., K]."""
        return F.normalize(codes, dim=-1) @ F.normalize(self.centroids, dim=-1).T

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        scores = self(codes)
        return -scores.max(-1).values.mean()

    def wins(self, codes: torch.Tensor) -> torch.Tensor:
        """How many of ``codes`` [..., c] each centroid wins, [K]."""
        return torch.bincount(self(codes).argmax(-1).flatten(), minlength=self.centroids.shape[0])

    @torch.no_grad()
    def reseed(self, codes: torch.Tensor, dead: torch.Tensor) -> int:
        """Centroids that won nothing (``dead`` [K] bool) restart on the ``codes`` [..., c] their closest centroid
        fits worst (k-means' usual fix for an empty cluster, as scikit-learn's); returns how many were re-seeded.
        An online k-means can otherwise leave a centroid stranded far from every code, and the readout then uses
        fewer clusters than it has."""
        n = int(dead.sum())
        if n:
            flat = codes.reshape(-1, codes.shape[-1])
            fit = self(flat).max(-1).values
            self.centroids[dead] = flat[fit.argsort()[:n]].to(self.centroids.dtype)
        return n


def calibrated_shifts(correlations: dict[str, torch.Tensor], repel: dict[str, float]) -> dict[str, float]:
    """The label-free shift rule: each term's shift is the ``repel[term]`` quantile of its feature correlations F
    over sampled pairs, so that exactly that fraction of the term's pairs repel (F below the shift) and the rest
    attract. A shift tuned for one backbone and dataset says nothing about another's F distribution; a fraction of
    pairs that repel means the same thing for every one."""
    return {term: float(torch.quantile(values.flatten().double(), repel[term])) for term, values in correlations.items()}


def bilinear_points(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Feature maps [B, d, h, w] read at continuous coordinates [B, P, 2] (x, y in [-1, 1], grid_sample's
    convention with align_corners=False) -> [B, P, d], bilinear (STEGO samples its points this way)."""
    out = F.grid_sample(maps, coords[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


def knn_table(pooled: torch.Tensor, k: int = 30, chunk: int = 1024) -> torch.Tensor:
    """Indices [N, k] of each image's k most similar other images (cosine of pooled features), nearest first.

    The image itself is excluded. Rows are computed ``chunk`` at a time, so memory is O(chunk x N), not N x N.
    """
    n = pooled.shape[0]
    if k >= n:
        raise ValueError(f"k-NN table: k={k} neighbours need more than {k} images, the split has {n}")
    x = F.normalize(pooled.float(), dim=-1)
    rows = []
    for start in range(0, n, chunk):
        sims = x[start : start + chunk] @ x.T
        own = torch.arange(start, min(start + chunk, n))
        sims[torch.arange(len(own)), own] = -float("inf")
        rows.append(sims.topk(k, dim=-1).indices)
    return torch.cat(rows)


FIVE_CROPS = ("top_left", "top_right", "bottom_left", "bottom_right", "centre")


def five_crop_boxes(height: int, width: int, ratio: float) -> list[tuple[int, int, int, int]]:
    """STEGO's training views of an image: its four corners and its centre, each ``ratio`` of the image's height
    and width, as (top, left, height, width) in the order of :data:`FIVE_CROPS`. Each crop is later resized to the
    backbone's input size, so the views see the scene at 1/ratio times the whole image's resolution."""
    if not 0 < ratio < 1:
        raise ValueError(f"five-crop ratio {ratio}: must be between 0 and 1 (a crop is a part of the image)")
    h, w = max(1, round(height * ratio)), max(1, round(width * ratio))
    return [(0, 0, h, w), (0, width - w, h, w), (height - h, 0, h, w), (height - h, width - w, h, w),
            ((height - h) // 2, (width - w) // 2, h, w)]
