"""Deep Spectral Methods (Melas-Kyriazi et al., CVPR 2022), the semantic-segmentation pipeline, on cached features.

Per image, the patches are cut into segments by spectral clustering of their affinity (:mod:`acseg.spectral`,
:func:`acseg.generators.spectral_concepts`): max(0, cos) of the L2-normalised features, optionally plus lambda
times the image's KNN-matting colour affinity, the first K eigenvectors of the normalised Laplacian, k-means of
the patches on them into a fixed number of segments (or the eigengap's). Each segment is then one embedding
(its mean feature, or DSM's crop: the box of its eroded and dilated mask, re-encoded by the backbone, [CLS]);
over the cluster split the L2-normalised (optionally PCA-reduced) embeddings are clustered by k-means into K
classes, and at evaluation every segment takes its nearest centroid's class. Settings: the ``dsm`` section
(:class:`bench.config.DSMConfig`).

Where this differs from the public code (lukemelas/deep-spectral-segmentation, ``extract/extract.py`` and the
semantic-segmentation README), on purpose or by the harness's protocol:

- features: the benchmark's cache (``features.type``, its backbone and resolution) instead of the last-layer keys
  of DINO ViT-B/16 at each image's own size (``-s features.type=keys`` gives keys);
- eigenvectors: a dense batched eigh instead of scipy's eigsh, and v_0 kept (see :mod:`acseg.spectral`);
- per-image k-means: :func:`acseg.batched_kmeans.batched_kmeans`, seeded by the run's seed (DSM's scikit-learn
  KMeans is unseeded); with ``dsm.adaptive`` an image of k segments is clustered on its first k eigenvectors
  (DSM: on all K, whose later ones weigh as much as the first in the distances);
- segment embeddings: by default the segment's mean feature (``dsm.regions=mean``, the harness's region-mean
  classifier); ``crops`` follows DSM (erode, dilate, box, re-encode) but crops at the feature resolution and
  resizes every box to a square ``dsm.crop_size`` (DSM feeds the box at the image's full resolution, any shape);
- dataset-level clustering: :func:`acseg.kmeans.kmeans` (full-batch Lloyd, restarts) instead of scikit-learn's
  MiniBatchKMeans; K = the dataset's classes;
- background: off by default (CamVid and Stanford Background have no background class); ``border`` is DSM's
  guess (the segment with most border patches), given the last class;
- prediction: each segment's indicator upsampled bilinearly to the label size (DSM: nearest), then the harness's
  evaluation (Hungarian matching, its dense CRF settings with ``--crf`` instead of SimpleCRF's); no
  self-training stage (DSM's optional ``train.py``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from acseg.classifier import crop_boxes, region_embeddings
from acseg.features import ViTFeatures, centred_pixels
from acseg.generators import segment_scores, spectral_concepts
from acseg.kmeans import kmeans
from acseg.spectral import border_segment, knn_colour_affinity, segment_boxes
from bench.backbones import get_backbone_spec, load_backbone
from bench.config import Config, Section
from bench.data import SegmentationSplit, dataset_spec, locate, resize_image
from bench.evaluate import Prediction
from bench.features import CachedFeatures, load_features
from bench.methods.base import (Fitted, History, Method, Predictor, TrainingDiverged, check_finite, feature_mean,
                                register_method)

# ------------------------------------------------------------------------------------------- settings


class DSMConfig(Section):
    """Deep Spectral Methods as a benchmark method: per-image spectral segments, then dataset-level k-means."""

    eigenvectors: int = Field(ge=2, description="K eigenvectors of the Laplacian per image (the constant one included)")
    segments: int = Field(ge=1, description="segments per image (the k of the k-means on the eigenvectors)")
    adaptive: bool = Field(description="segments per image from the eigengap instead of `segments`")
    normalised: bool = Field(description="the normalised Laplacian (L v = mu D v); false: L v = mu v")
    colour_weight: float = Field(ge=0, description="lambda of the KNN-matting colour affinity; 0: features only")
    colour_neighbours: list[int] = Field(min_length=1, description="k of each KNN colour affinity")
    colour_distance_weights: list[float] = Field(min_length=1, description="weight of (x, y) in each KNN")
    centre: bool = Field(description="subtract the cluster split's mean feature first (DSM: no)")
    segment_n_init: int = Field(ge=1, description="restarts of the per-image k-means on the eigenvectors")
    segment_iters: int = Field(ge=1)
    background: Literal["none", "border"] = Field(
        description="border: per image, the segment with most border patches is the background class")
    regions: Literal["mean", "crops"] = Field(
        description="what represents a segment: its mean feature, or its eroded/dilated box re-encoded ([CLS])")
    erode: int = Field(ge=0, description="crops only: erosions of a segment's mask before its box")
    dilate: int = Field(ge=0, description="crops only: dilations after the erosions")
    crop_size: int = Field(ge=1, description="crops only: the backbone's square input, a multiple of its patch")
    pca_dim: int = Field(ge=0, description="PCA dimension of the segment embeddings before k-means (0: none)")
    n_clusters: int = Field(ge=0, description="K; 0: the dataset's number of classes")
    n_init: int = Field(ge=1, description="dataset-level k-means restarts; the lowest inertia wins (no labels)")
    iters: int = Field(ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> DSMConfig:
        if len(self.colour_neighbours) != len(self.colour_distance_weights):
            raise ValueError("dsm.colour_neighbours and dsm.colour_distance_weights must have one entry each per KNN")
        if self.adaptive and self.eigenvectors < 3:
            raise ValueError("dsm.adaptive needs dsm.eigenvectors >= 3 (the eigengap skips the first gap)")
        return self


class DSMSegmenter(torch.nn.Module):
    """The fitted pieces: the feature mean subtracted first (zeros: DSM does not centre), the PCA of the segment
    embeddings (none when ``pca_dim`` is 0) and the K class centroids (euclidean, in the projected space)."""

    def __init__(self, feature_dim: int, embedding_dim: int, n_centroids: int, pca_dim: int):
        super().__init__()
        space = pca_dim or embedding_dim
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("pca_mean", torch.zeros(embedding_dim))
        self.register_buffer("pca_components", torch.zeros(pca_dim, embedding_dim))
        self.register_buffer("centroids", torch.zeros(n_centroids, space))

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Segment embeddings [..., D] -> the space the centroids live in: L2-normalised, then the PCA if any."""
        x = F.normalize(embeddings.float(), dim=-1)
        if self.pca_components.shape[0]:
            x = (x - self.pca_mean) @ self.pca_components.T
        return x

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (euclidean) of every segment embedding [..., D] -> [...]."""
        x = self.project(embeddings)
        flat = x.reshape(-1, x.shape[-1])
        return torch.cdist(flat, self.centroids).argmin(-1).reshape(x.shape[:-1])


def fit_pca(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], components [dim, D]) of x [M, D]: the top principal directions (SVD of the centred rows)."""
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:dim]


class SplitImages:
    """A split's images by name, resized: at the patch grid (the colour affinity) or at the pixels the features
    came from (the crops)."""

    def __init__(self, cfg: Config, split: str):
        spec = dataset_spec(cfg)
        self.images = SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), split,
                                        with_labels=False)
        self.index = {name: i for i, name in enumerate(self.images.names)}

    def at(self, names: list[str], size: tuple[int, int]) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] at ``size`` (bilinear, antialiased)."""
        missing = [n for n in names if n not in self.index]
        if missing:
            raise KeyError(f"images {missing[:3]} of the cached features are not in split {self.images.split!r}")
        return torch.stack([resize_image(self.images[self.index[n]][0], size) for n in names])


class DSMRegions:
    """Cached features [B, h, w, d] of named images -> (segments [B, h, w], embeddings [B, S, D], present [B, S],
    background [B, S]): the per-image half of DSM, the same at fitting and at evaluation."""

    def __init__(self, cfg: Config, s: DSMConfig, split: str, mean: torch.Tensor, seed: int, device: torch.device):
        self.s, self.mean, self.seed, self.device = s, mean.to(device), seed, device
        self.slots = s.eigenvectors - 1 if s.adaptive else s.segments
        needs_images = s.colour_weight > 0 or s.regions == "crops"
        self.images = SplitImages(cfg, split) if needs_images else None
        self.extractor = None
        if s.regions == "crops":
            self.patch = get_backbone_spec(cfg.backbone.name).patch_size
            if s.crop_size % self.patch:
                raise ValueError(f"invalid parameter dsm.crop_size={s.crop_size}: must be a multiple of the patch "
                                 f"size {self.patch} of {cfg.backbone.name}")
            self.extractor = ViTFeatures(load_backbone(cfg.backbone)[0]).to(device)
            self.batch_size = max(1, cfg.features.batch_size)

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, names: list[str]):
        s = self.s
        b, h, w, _ = features.shape
        x = centred_pixels(features.to(self.device), self.mean)
        colour = None
        if s.colour_weight > 0:
            grid = self.images.at(names, (h, w)).permute(0, 2, 3, 1).to(self.device)
            colour = s.colour_weight * knn_colour_affinity(grid, s.colour_neighbours, s.colour_distance_weights)
        n_segments = None if s.adaptive else s.segments
        segments = spectral_concepts(x, n_segments, s.eigenvectors, self.seed, s.segment_iters, s.segment_n_init,
                                     s.normalised, colour)
        slots = max(self.slots, int(segments.max()) + 1)
        embeddings, counts = region_embeddings(x, segments, slots)
        present = counts > 0
        segments = segments.reshape(b, h, w)
        if self.extractor is not None:
            embeddings = self._crops(segments, slots, names)
        background = torch.zeros_like(present)
        if s.background == "border":
            background = F.one_hot(border_segment(segments, slots), slots).bool()
        return segments, embeddings, present, background

    def _crops(self, segments: torch.Tensor, slots: int, names: list[str]) -> torch.Tensor:
        """[CLS] of every segment's box crop (DSM's erode/dilate/box), re-encoded; zeros where none."""
        b, h, w = segments.shape
        boxes, present = segment_boxes(segments, slots, self.s.erode, self.s.dilate)
        images = self.images.at(names, (h * self.patch, w * self.patch)).to(self.device)
        crops = crop_boxes(images, boxes.to(self.device), self.patch, self.s.crop_size)[present.to(self.device)]
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            cls = [self.extractor(part)["cls"].float() for part in crops.split(self.batch_size)]
        out = torch.zeros(b, slots, self.extractor.dim, device=self.device)
        out[present.to(self.device)] = torch.cat(cls)
        return out


def collect_segments(regions: DSMRegions, feats: CachedFeatures, batch_size: int = 8) -> torch.Tensor:
    """The embeddings [M, D] of every (non-background) segment of a split."""
    out = []
    for start in range(0, len(feats), batch_size):
        for images in feats.groups(range(start, min(start + batch_size, len(feats)))):
            _, embeddings, present, background = regions(images.features, images.names)
            out.append(embeddings[present & ~background].cpu())
    return torch.cat(out)


class DSMPredictor(Predictor):
    """Segments are DSM's per-image spectral segments, each carrying its class; counts segments per image."""

    def __init__(self, model: DSMSegmenter, regions: DSMRegions, n_clusters: int):
        self.model, self.regions, self.n_clusters, self.counts = model, regions, n_clusters, []

    def __call__(self, features, size, cls_attention, names):
        segments, embeddings, present, background = self.regions(features, names)
        classes = self.model.classify(embeddings.to(self.model.centroids.device))
        classes = classes.masked_fill(background.to(classes.device), self.n_clusters - 1)
        classes = classes.masked_fill(~present.to(classes.device), -1)
        used = present.sum(1)
        self.counts.append(used.cpu())
        return Prediction(segment_scores(segments, embeddings.shape[1], size), classes, segments_used=used)

    def summary(self) -> dict[str, float]:
        c = torch.cat(self.counts).float()
        return {"concepts_per_image_mean": c.mean().item(), "concepts_per_image_min": c.min().item(),
                "concepts_per_image_max": c.max().item()}


class DSMMethod(Method):
    name = "dsm"
    config = DSMConfig

    def report_note(self, cfg: Config) -> str:
        d = cfg.dsm
        return (f"Deep Spectral Methods: {d.eigenvectors} eigenvectors of the normalised Laplacian of max(0, cos) per "
                f"image, {d.segments} segments, then k-means of the segment means over the cluster split; where it "
                "differs from the published code: bench/methods/dsm.py")
    title = "Deep Spectral Methods"

    def n_clusters(self, cfg: Config) -> int:
        return cfg.dsm.n_clusters or super().n_clusters(cfg)

    def fit(self, cfg: Config, seed: int, device: torch.device, progress: bool = True) -> Fitted:
        s = cfg.dsm
        feats = load_features(cfg, cfg.data.cluster_split)
        check_finite(feats)
        k = self.n_clusters(cfg)
        n_centroids = k - int(s.background != "none")
        mean = feature_mean(feats, s.centre)
        regions = DSMRegions(cfg, s, cfg.data.cluster_split, mean, seed, device)
        embeddings = collect_segments(regions, feats)
        if embeddings.shape[0] < n_centroids:
            raise TrainingDiverged(f"only {embeddings.shape[0]} segments over the cluster split, fewer than the "
                                   f"K={n_centroids} classes to cluster them into")
        model = DSMSegmenter(feats.dim, embeddings.shape[1], n_centroids, s.pca_dim)
        model.feature_mean.copy_(mean)
        if s.pca_dim:
            if s.pca_dim > min(embeddings.shape):
                raise ValueError(f"invalid parameter dsm.pca_dim={s.pca_dim}: at most {min(embeddings.shape)} here")
            pca_mean, components = fit_pca(F.normalize(embeddings.float(), dim=-1), s.pca_dim)
            model.pca_mean.copy_(pca_mean)
            model.pca_components.copy_(components)
        result = kmeans(model.project(embeddings), n_centroids, seed=seed, iters=s.iters, n_init=s.n_init)
        model.centroids.copy_(result.centroids)
        history = History()
        for restart, inertia in enumerate(result.inertias, 1):  # "loss" = each restart's k-means objective
            history.log({"step": restart, "loss": inertia})
        facts: dict[str, Any] = {"feature_dim": feats.dim, "embedding_dim": embeddings.shape[1], "n_clusters": k,
                                 "seed": seed, "weights_sha256": feats.meta["weights_sha256"],
                                 "dsm": s.model_dump()}  # the settings (their section is not in the Config yet)
        return Fitted(model.to(device), facts, history.stop(),
                      {"segments": embeddings.shape[0], "segments_per_image": embeddings.shape[0] / len(feats),
                       "inertia": result.inertia},
                      f"Deep Spectral Methods: k-means of {embeddings.shape[0]} segments into K={n_centroids}, "
                      f"inertia of each restart, seed {seed}")

    def build(self, cfg: Config, facts: dict[str, Any]) -> DSMSegmenter:
        s = fitted_settings(facts)
        return DSMSegmenter(facts["feature_dim"], facts["embedding_dim"],
                            facts["n_clusters"] - int(s.background != "none"), s.pca_dim)

    def predictor(self, cfg, model, facts, device, split) -> Predictor:
        regions = DSMRegions(cfg, fitted_settings(facts), split, model.feature_mean, facts["seed"], device)
        return DSMPredictor(model, regions, facts["n_clusters"])


def fitted_settings(facts: dict[str, Any]) -> DSMConfig:
    """The settings a model was fitted with (saved in its facts): evaluation segments images the same way."""
    return DSMConfig.model_validate(facts["dsm"])


register_method(DSMMethod())
