"""DINO k-means, the floor: k-means with K = classes over the patch features of the cluster split (dataset-level,
optionally centred and on the unit sphere); every evaluation patch's closeness to each centroid is upsampled to
the label resolution before the argmax."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from acseg.features import centred_pixels
from acseg.kmeans import centroid_scores, kmeans
from bench.config import Config, Section
from bench.evaluate import Prediction
from bench.features import CachedFeatures, load_features
from bench.methods.base import Fitted, History, Method, Predictor, check_overclustering, feature_mean, register_method

# ------------------------------------------------------------------------------------------- settings


class KMeansConfig(Section):
    """DINO k-means, the floor: K clusters over the patch features of the cluster split."""

    k: int = Field(ge=0, description="0: the dataset's number of classes")
    cosine: bool
    centre: bool
    n_init: int = Field(ge=1, description="restarts; the lowest inertia wins (no labels involved)")
    iters: int = Field(ge=1)
    max_points: int = Field(ge=1, description="patches drawn from the cluster split to fit the centroids")
    overcluster_k: int = Field(ge=0, description=">0: also fit K' > classes, the separate over-clustering metric")


class KMeansSegmenter(torch.nn.Module):
    def __init__(self, centroids: torch.Tensor, mean: torch.Tensor, cosine: bool):
        super().__init__()
        self.register_buffer("centroids", centroids.float())
        self.register_buffer("feature_mean", mean.float())
        self.cosine = cosine

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Closeness of every pixel to every centroid at ``out_size`` [B, K, H, W]; the argmax is the cluster."""
        b, h, w, _ = features.shape
        scores = centroid_scores(centred_pixels(features, self.feature_mean), self.centroids, self.cosine)  # [B, n, K]
        maps = scores.transpose(1, 2).reshape(b, -1, h, w)
        return F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)


def fit_centroids(cfg: Config, feats: CachedFeatures, n_clusters: int, seed: int):
    """k-means over (a seeded sample of at most kmeans.max_points) patches: (KMeansResult, mean)."""
    mean = feature_mean(feats, cfg.kmeans.centre)
    flat = feats.all_rows()
    generator = torch.Generator().manual_seed(seed)
    if flat.shape[0] > cfg.kmeans.max_points:
        flat = flat[torch.randperm(flat.shape[0], generator=generator)[: cfg.kmeans.max_points]]
    k = cfg.kmeans
    return kmeans(flat.float() - mean, n_clusters, seed=seed, iters=k.iters, cosine=k.cosine, n_init=k.n_init), mean


class SegmenterPredictor(Predictor):
    """A model that maps (features, size) to cluster scores: every segment is a cluster."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, features, size, cls_attention, names):
        return Prediction(self.model(features, size))


class KMeansMethod(Method):
    name = "kmeans"
    config = KMeansConfig
    title = "DINO k-means (floor)"

    def n_clusters(self, cfg: Config) -> int:
        return cfg.kmeans.k or super().n_clusters(cfg)

    def overcluster_k(self, cfg: Config) -> int:
        return cfg.kmeans.overcluster_k

    def check(self, cfg: Config, n_classes: int) -> None:
        check_overclustering("kmeans.overcluster_k", cfg.kmeans.overcluster_k, n_classes, cfg.data.dataset)

    def fit(self, cfg: Config, seed: int, device: torch.device, progress: bool = True) -> Fitted:
        feats = load_features(cfg, cfg.data.cluster_split)
        history = History()
        result, mean = fit_centroids(cfg, feats, self.n_clusters(cfg), seed)
        for restart, inertia in enumerate(result.inertias, 1):  # "loss" = each restart's k-means objective
            history.log({"step": restart, "loss": inertia})
        facts: dict[str, Any] = {"feature_dim": feats.dim, "n_clusters": self.n_clusters(cfg),
                                 "weights_sha256": feats.meta["weights_sha256"]}
        if self.overcluster_k(cfg):
            facts["overcluster_centroids"] = fit_centroids(cfg, feats, self.overcluster_k(cfg), seed)[0].centroids
        model = KMeansSegmenter(result.centroids, mean, cfg.kmeans.cosine)
        return Fitted(model, facts, history.stop(), {"inertia": result.inertia},
                      f"k-means K={self.n_clusters(cfg)}: inertia of each restart, seed {seed}")

    def build(self, cfg: Config, facts: dict[str, Any]) -> KMeansSegmenter:
        d = facts["feature_dim"]
        return KMeansSegmenter(torch.zeros(facts["n_clusters"], d), torch.zeros(d), cfg.kmeans.cosine)

    def predictor(self, cfg, model, facts, device, split) -> Predictor:
        return SegmenterPredictor(model)

    def overcluster_predictor(self, cfg, model, facts, device, split) -> Predictor:
        k = self.overcluster_k(cfg)
        centroids = facts.get("overcluster_centroids")
        if centroids is None or centroids.shape[0] != k:
            raise FileNotFoundError(f"the k-means fit has no over-clustering centroids with K'={k}: fit it again with "
                                    f"kmeans.overcluster_k={k}")
        return SegmenterPredictor(KMeansSegmenter(centroids, model.feature_mean, cfg.kmeans.cosine).to(device))


register_method(KMeansMethod())
