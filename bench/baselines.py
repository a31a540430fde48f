"""Baselines evaluated through the same code path as ACSeg.

DINO k-means (the floor): k-means with K = number of classes over patch features of the training split
(dataset-level, optionally centred and on the unit sphere); every evaluation patch's closeness to each
centroid is upsampled to the label resolution before the argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from acseg.kmeans import centroid_scores, kmeans
from bench.config import Config
from bench.features import CachedFeatures
from bench.train import feature_mean


class KMeansSegmenter(torch.nn.Module):
    def __init__(self, centroids: torch.Tensor, mean: torch.Tensor, cosine: bool):
        super().__init__()
        self.register_buffer("centroids", centroids.float())
        self.register_buffer("feature_mean", mean.float())
        self.cosine = cosine

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Closeness of every pixel to every centroid at ``out_size``; the argmax is the cluster."""
        b, h, w, d = features.shape
        x = features.reshape(b, h * w, d).float() - self.feature_mean
        scores = centroid_scores(x, self.centroids, self.cosine)  # [B, n, K]
        maps = scores.transpose(1, 2).reshape(b, -1, h, w)
        return F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)  # [B, K, H, W] scores


def fit_kmeans_baseline(cfg: Config, train: CachedFeatures, n_clusters: int, seed: int) -> KMeansSegmenter:
    feats = train.features
    d = feats.shape[-1]
    mean = feature_mean(feats, cfg.kmeans.centre)
    flat = feats.reshape(-1, d)
    generator = torch.Generator().manual_seed(seed)
    if flat.shape[0] > cfg.kmeans.max_points:
        flat = flat[torch.randperm(flat.shape[0], generator=generator)[: cfg.kmeans.max_points]]
    result = kmeans(flat.float() - mean, n_clusters, seed=seed, iters=cfg.kmeans.iters, cosine=cfg.kmeans.cosine,
                    n_init=cfg.kmeans.n_init)
    return KMeansSegmenter(result.centroids, mean, cfg.kmeans.cosine)
