"""ACSeg on cached features: the concept generator trained by its loss, then the concept classifier fit by k-means
over the concept regions of the cluster split (docs/methods/acseg.md). The whole training loop is :func:`train_generator`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from tqdm import tqdm

from acseg.assignment import cosine_assignment, hard_assignment
from acseg.classifier import background_concepts, fit_concept_classifier, region_embeddings
from acseg.concept_generator import ConceptGenerator
from acseg.features import centred_pixels
from acseg.losses import Graph, concept_loss
from acseg.model import ACSeg
from bench.config import ARITHMETIC, Config, Section, added_option, with_overrides
from bench.crops import CropEncoder
from bench.evaluate import Prediction
from bench.features import CachedFeatures, load_features
from bench.methods.base import (Fitted, History, Method, Predictor, TrainingDiverged, check_finite,
                                check_overclustering, feature_mean, register_method)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- settings


class TrainConfig(Section):
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(ge=0, description="0: off")
    pixel_samples: int = Field(ge=0, description="pixels per image inside the loss (0: all)")
    log_every: int = Field(ge=1)
    precision: Literal["float32", "float64"] = Field(
        description="the generator trains (and the classifier's k-means runs) in this precision; float64 keeps "
                    "float-rounding differences (another thread count, another processor) from growing into "
                    "other concepts")
    average_last: float = added_option(
        0.0, "0: keep the last step's weights; 0 < f <= 1: the uniform average of the weights after each of the last "
             "f of the steps (stochastic weight averaging), so that the result does not hang on where the last "
             "steps happened to land", ge=0, le=1)


class ClassifierConfig(Section):
    n_classes: int = Field(ge=0, description="K; 0: the dataset's number of classes")
    cosine: bool = Field(description="spherical k-means over L2-normalised region embeddings")
    raw_regions: bool = Field(description="region means of the raw (not centred) features")
    weighted: bool = Field(description="weight each region by its pixel count in the k-means")
    n_init: int = Field(ge=1, description="k-means restarts; the lowest inertia wins (no labels involved)")
    iters: int = Field(ge=1)
    background: Literal["none", "cls_attention"] = Field(
        description="VOC's background split: the concepts of the low cluster of a per-image 2-means over their "
                    "summed [CLS] attention are background")
    overcluster_k: int = Field(ge=0, description=">0: also fit K' > classes, the separate over-clustering metric")
    regions: Literal["mean", "crops"] = Field(
        description="what represents a concept: its region's mean feature, or its box re-encoded by the backbone")
    region_features: Literal["tokens", "keys", "both"] = Field(
        description="mean: which cached features a region's mean is taken of (whatever the generator reads); both: "
                    "the L2-normalised means of the tokens and of the keys, concatenated")
    crop_size: int = Field(ge=1, description="crops only: the backbone's square input, a multiple of its patch")


class GraphConfig(Section):
    """The pixel graph of ACSeg's loss (acseg.losses.Graph)."""

    kind: Literal["dense", "knn", "threshold"] = Field(description="dense max(0, cos) (the paper's reading), k-NN "
                                                                   "sparsified (symmetrised), or thresholded")
    k: int = Field(ge=1, description="knn: neighbours per pixel, among the pixels the loss sees")
    threshold: float = Field(ge=0, lt=1, description="threshold: the affinity an edge must exceed")
    features: Literal["tokens", "keys", "both"] = Field(
        description="what the graph's affinity compares (the generator reads features.type); both: the mean of the "
                    "tokens' and the keys' cosines")


class ACSegConfig(Section):
    """ACSeg: the concept generator (docs/methods/acseg.md step 2), its loss, its training and its concept classifier."""

    prototypes: int = Field(ge=2, description="k (ACSeg needs at least 2 prototypes)")
    depth: int = Field(ge=1, description="N decoder blocks")
    width: int | None = Field(description="block width; None: the backbone width (the paper)")
    heads: int = Field(ge=1)
    mlp_width: int = Field(ge=1)
    self_attention: bool = Field(description="prototypes attend to each other in every block")
    prototype_scale: float = added_option(
        1.0, "the prototypes' norm at initialisation (entries N(0, scale^2 / width)); at 1 an image's concepts start as "
             "near copies of each other, larger values start them apart", gt=0)
    loss: Literal["modularity", "soft_modularity", "no_degree", "distortion"]
    soft_temperature: float = Field(gt=0, description="soft_modularity only")
    intensity_temperature: float = added_option(
        0.0, "modularity and no_degree: 0: D_ij = max_c S+_ic S+_jc (docs/methods/acseg.md); tau > 0: the softmax-weighted "
             "mean over concepts at temperature tau, a smooth max whose gradient does not jump when the winning "
             "concept of a pair changes", ge=0)
    centre: bool = Field(description="subtract the training split's mean feature before everything")
    arithmetic: Literal["native", "pinned"] = Field(
        "native", json_schema_extra=ARITHMETIC,
        description="CPU float arithmetic of the processes that run ACSeg. native: the processor's fastest kernels, "
                    "whose order of float sums depends on the processor and the thread count, and ACSeg's training "
                    "turns any rounding difference into another generator (docs/findings/reproducibility.md); pinned: oneMKL's AVX2 "
                    "branch in strict reproducibility mode, ATen's AVX2 kernels, LayerNorm and softmax gradients "
                    "summed in a fixed order (bench/arithmetic.py), so that a seed gives the same numbers on any "
                    "thread count and on any x86-64 processor with AVX2 (recorded with each run, not part of the "
                    "hash)")
    graph: GraphConfig
    train: TrainConfig
    classifier: ClassifierConfig

    @model_validator(mode="after")
    def _width(self) -> ACSegConfig:
        if self.width is not None and self.width % self.heads:
            raise ValueError(f"acseg.width={self.width} must be divisible by acseg.heads={self.heads}")
        if self.classifier.background != "none" and self.classifier.n_classes == 1:
            raise ValueError("acseg.classifier.n_classes=1: the background split needs at least one class besides "
                             "background")
        return self


PRECISION = {"float32": torch.float32, "float64": torch.float64}


def build_model(cfg: Config, feature_dim: int, n_classes: int, mean: torch.Tensor | None = None,
                region_dim: int | None = None) -> ACSeg:
    a, c = cfg.acseg, cfg.acseg.classifier
    generator = ConceptGenerator(feature_dim, a.prototypes, a.depth, a.width, a.heads, a.mlp_width, a.self_attention,
                                 a.prototype_scale, fixed_order=a.arithmetic == "pinned")
    return ACSeg(generator, torch.zeros(feature_dim) if mean is None else mean, n_classes, cosine=c.cosine,
                 raw_regions=c.raw_regions, background=c.background == "cls_attention", region_dim=region_dim)


class RegionFeatures:
    """What the concept classifier sees of a concept when it reads other cached features than the generator
    (acseg.classifier.region_features): the mean of those features over the concept's patches, raw or centred by
    the training split's mean (acseg.classifier.raw_regions); with ``both``, the L2-normalised means of the tokens
    and of the keys side by side. (model, features [B, h, w, d], names) -> [B, k, D]."""

    def __init__(self, cfg: Config, split: str, means: dict[str, torch.Tensor], stream: bool):

        wanted = cfg.acseg.classifier.region_features
        self.types = ["tokens", "keys"] if wanted == "both" else [wanted]
        self.sources = {t: load_features(with_overrides(cfg, {"features.type": t}), split, stream=stream)
                        for t in self.types}
        self.means = means
        self.index = {name: i for i, name in enumerate(next(iter(self.sources.values())).names)}

    @staticmethod
    def split_means(cfg: Config) -> dict[str, torch.Tensor]:
        """The training split's mean of each feature type the regions read (zeros for raw regions)."""

        wanted = cfg.acseg.classifier.region_features
        types = ["tokens", "keys"] if wanted == "both" else [wanted]
        out = {}
        for t in types:
            train = load_features(with_overrides(cfg, {"features.type": t}), cfg.data.train_split)
            out[t] = feature_mean(train, not cfg.acseg.classifier.raw_regions)
        return out

    @property
    def dim(self) -> int:
        return sum(f.dim for f in self.sources.values())

    def __call__(self, model: ACSeg, features: torch.Tensor, names: list[str]) -> torch.Tensor:
        _, s = model.assign(features)
        assignment, k = hard_assignment(s), model.generator.n_prototypes
        parts = []
        for t in self.types:
            other = self.sources[t].take([self.index[n] for n in names]).features.to(features.device)
            parts.append(region_embeddings(centred_pixels(other, self.means[t].to(features.device)), assignment, k)[0])
        return parts[0] if len(parts) == 1 else torch.cat([F.normalize(p, dim=-1) for p in parts], -1)


def region_encoder(cfg: Config, split: str, device: torch.device, facts: dict | None = None, stream: bool = False):
    """What the classifier reads of each concept when it is not the model's own region mean (None): re-encoded
    crops, or the region means of other cached features."""
    c = cfg.acseg.classifier
    if c.regions == "crops":
        return CropEncoder(cfg, split, device)
    if c.region_features != cfg.features.type:
        means = facts["region_means"] if facts and "region_means" in facts else RegionFeatures.split_means(cfg)
        return RegionFeatures(cfg, split, means, stream)
    return None


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    t = cfg.acseg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _loss_kwargs(cfg: Config) -> dict:
    if cfg.acseg.loss == "soft_modularity":
        return {"temperature": cfg.acseg.soft_temperature}
    if cfg.acseg.loss in ("modularity", "no_degree") and cfg.acseg.intensity_temperature:
        return {"intensity_temperature": cfg.acseg.intensity_temperature}
    return {}


class GraphFeatures:
    """What the loss's graph compares for a batch of images (acseg.graph.features): the generator's own pixels, the
    other feature type's (from its cache entry, centred like the generator's), or both (L2-normalised and
    concatenated, so the cosine is the mean of the two cosines)."""

    def __init__(self, cfg: Config, train: CachedFeatures, split: str):

        wanted = cfg.acseg.graph.features
        self.own = wanted in (cfg.features.type, "both")
        other = {"tokens": "keys", "keys": "tokens"}[cfg.features.type]
        self.other = None
        if wanted in (other, "both"):
            self.other = load_features(with_overrides(cfg, {"features.type": other}), split)
            if self.other.names != train.names:
                raise ValueError(f"the {other} and {cfg.features.type} cache entries of {split} list other images")
            self.other_mean = feature_mean(self.other, cfg.acseg.centre)

    def __call__(self, x: torch.Tensor, images: list[int], idx: torch.Tensor | None) -> torch.Tensor:
        """x: the generator's pixels [b, P, d] (already sampled by ``idx`` [b, P] when not None)."""
        if self.other is None:
            return x
        y = centred_pixels(self.other.take(images).features, self.other_mean.to(x.dtype)).to(x.device)
        if idx is not None:
            y = torch.gather(y, 1, idx[..., None].expand(-1, -1, y.shape[-1]))
        if not self.own:
            return y
        return torch.cat([F.normalize(x, dim=-1), F.normalize(y, dim=-1)], -1)


def untrained_model(cfg: Config, seed: int, train: CachedFeatures, n_classes: int) -> ACSeg:
    """The model a training of ``seed`` starts from (its generator's initial weights, the training split's mean)."""
    torch.manual_seed(seed)
    return build_model(cfg, train.dim, n_classes, feature_mean(train, cfg.acseg.centre))


def train_generator(cfg: Config, seed: int, train: CachedFeatures, n_classes: int, device: torch.device,
                    progress: bool = True) -> tuple[ACSeg, History]:
    """The concept generator's training: batches of images, the loss on (a sample of) their pixels, AdamW."""
    generator = torch.Generator().manual_seed(seed)
    check_finite(train)
    g = cfg.acseg.graph
    graph, graph_features = Graph(g.kind, g.k, g.threshold), GraphFeatures(cfg, train, cfg.data.train_split)
    t = cfg.acseg.train
    model = untrained_model(cfg, seed, train, n_classes).to(device).to(PRECISION[t.precision])
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel (one pass over all parameters) is 4-5x faster than the per-tensor loop on a CPU
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=device.type in ("cpu", "cuda"))
    history = History()
    # acseg.train.average_last: from this step on, the weights after each step join a uniform average (SWA)
    average_from = t.steps - max(1, round(t.average_last * t.steps)) if t.average_last else t.steps
    averaged = None
    for step in tqdm(range(t.steps), desc="train acseg", disable=not progress, unit="step"):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = torch.randint(len(train), (t.batch_size,), generator=generator)
        loss = 0.0
        for images in train.groups(batch):  # one group unless the images' patch grids differ
            x = model.prepare(images.features.to(device))
            similarity = cosine_assignment(x, model.generator(x))
            b, n_pix, d = x.shape
            idx = None
            if 0 < t.pixel_samples < n_pix:  # the loss on a random subset of pixels: O(P^2) instead of O(n^2)
                idx = torch.rand(b, n_pix, generator=generator).argsort(-1)[:, : t.pixel_samples].to(device)
                x = torch.gather(x, 1, idx[..., None].expand(-1, -1, d))
                similarity = torch.gather(similarity, 1, idx[..., None].expand(-1, -1, similarity.shape[-1]))
            share = len(images.positions) / t.batch_size  # the batch mean over images of every grid
            on_graph = graph_features(x, [int(batch[p]) for p in images.positions], idx)
            loss = loss + concept_loss(cfg.acseg.loss, on_graph, similarity, graph, **_loss_kwargs(cfg)) * share
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at step {step} (lr {lr_at(step, cfg):.2e}); "
                                   "lower acseg.train.lr or raise acseg.train.warmup_steps")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        if step >= average_from:
            if averaged is None:
                from torch.optim.swa_utils import AveragedModel

                averaged = AveragedModel(model)
            averaged.update_parameters(model)
        if step % t.log_every == 0 or step == t.steps - 1:
            history.log({"step": step + 1, "loss": loss.item(), "lr": lr_at(step, cfg)})
    if averaged is not None:
        model = averaged.module
    return model.float(), history.stop()  # inference in float32 whatever the training's precision


@torch.no_grad()
def collect_regions(model: ACSeg, feats: CachedFeatures, device: torch.device, batch_size: int = 16,
                    background: bool = False, crops: Callable | None = None, progress: bool = False):
    """Region embeddings [M, D] and pixel counts [M] of every concept that wins a patch, over a whole split.

    The embedding is the region's mean feature, or with ``crops`` (a :class:`bench.crops.CropEncoder`) the [CLS] of
    its re-encoded crop. With ``background`` (the background split), background concepts are left out."""
    model.eval()
    embeddings, sizes = [], []
    for start in tqdm(range(0, len(feats), batch_size), desc="concept regions", disable=not progress, unit="batch"):
        for images in feats.groups(range(start, min(start + batch_size, len(feats)))):
            part = images.features.to(device)
            emb, counts, s = model.regions(part)
            if crops is not None:
                emb = crops(model, part, images.names)
            keep = counts > 0
            if background:
                attention = images.cls_attention.to(device)
                keep &= ~background_concepts(attention, hard_assignment(s), model.generator.n_prototypes)
            embeddings.append(emb[keep].cpu())
            sizes.append(counts[keep].cpu())
    return torch.cat(embeddings), torch.cat(sizes)


def classifier_centroids(cfg: Config, model: ACSeg, feats: CachedFeatures, n_classes: int, seed: int,
                         device: torch.device, progress: bool = False) -> tuple[torch.Tensor, int]:
    """k-means over a split's concept regions into K classes (K-1 and background with the background split):
    (centroids, number of regions). The regions are what acseg.classifier.regions says: means or re-encoded crops."""
    c = cfg.acseg.classifier
    crops = region_encoder(cfg, feats.meta["split"], device)
    regions, sizes = collect_regions(model, feats, device, background=model.background, crops=crops,
                                     progress=progress and c.regions == "crops")
    k = n_classes - int(model.background)
    if regions.shape[0] < k:
        raise TrainingDiverged(f"only {regions.shape[0]} concept regions over the cluster split, fewer than "
                               f"K={k} classes: the concepts collapsed")
    result = fit_concept_classifier(regions, k, seed=seed, cosine=c.cosine, iters=c.iters, n_init=c.n_init,
                                    weights=sizes if c.weighted else None,
                                    dtype=PRECISION[cfg.acseg.train.precision])
    return result.centroids.float(), regions.shape[0]


def _with_region_dim(cfg: Config, model: ACSeg, region_dim: int) -> ACSeg:
    """The same trained model with a classifier of another embedding width."""
    wider = build_model(cfg, model.feature_mean.shape[0], model.class_centroids.shape[0] + int(model.background),
                        region_dim=region_dim)
    state = {k: v for k, v in model.state_dict().items() if k != "class_centroids"}
    wider.load_state_dict({**state, "class_centroids": wider.class_centroids}, strict=True)
    return wider.to(model.feature_mean.device)


class ACSegPredictor(Predictor):
    """ACSeg's segments are its concepts, each carrying its class; counts the concepts every image uses."""

    def __init__(self, model: ACSeg, crops=None):
        self.model, self.crops, self.counts = model, crops, []

    def __call__(self, features, size, cls_attention, names):
        regions = self.crops(self.model, features, names) if self.crops else None
        seg = self.model(features, size, cls_attention, regions)
        self.counts.append(seg.n_concepts.cpu())
        return Prediction(seg.concept_scores, seg.concept_classes, segments_used=seg.n_concepts)

    def summary(self) -> dict[str, float]:
        c = torch.cat(self.counts).float()
        return {"concepts_per_image_mean": c.mean().item(), "concepts_per_image_min": c.min().item(),
                "concepts_per_image_max": c.max().item()}


class ACSegMethod(Method):
    name = "acseg"
    config = ACSegConfig
    steps_key = "acseg.train.steps"
    title = "ACSeg"

    def n_clusters(self, cfg: Config) -> int:
        return cfg.acseg.classifier.n_classes or super().n_clusters(cfg)

    def overcluster_k(self, cfg: Config) -> int:
        return cfg.acseg.classifier.overcluster_k

    def report_note(self, cfg: Config) -> str:
        return f"ACSeg: trained for {cfg.acseg.train.steps} steps (main table)"

    def check(self, cfg: Config, n_classes: int) -> None:
        check_overclustering("acseg.classifier.overcluster_k", cfg.acseg.classifier.overcluster_k, n_classes, cfg.data.dataset)

    def record(self, cfg: Config) -> dict[str, Any]:
        return {"arithmetic": cfg.acseg.arithmetic}

    def reusable(self, cfg: Config, metrics: dict[str, Any]) -> bool:
        return metrics.get("arithmetic", "native") == cfg.acseg.arithmetic  # runs from before the option: native

    def fit(self, cfg: Config, seed: int, device: torch.device, progress: bool = True) -> Fitted:
        train = load_features(cfg, cfg.data.train_split)
        cluster = load_features(cfg, cfg.data.cluster_split) if cfg.data.cluster_split != cfg.data.train_split else train
        k = self.n_clusters(cfg)
        model, history = train_generator(cfg, seed, train, k, device, progress)
        centroids, n_regions = classifier_centroids(cfg, model, cluster, k, seed, device, progress)
        facts: dict[str, Any] = {"feature_dim": train.dim, "n_clusters": k, "weights_sha256": train.meta["weights_sha256"],
                                 "region_dim": centroids.shape[1], "arithmetic": cfg.acseg.arithmetic}
        if centroids.shape[1] != model.class_centroids.shape[1]:  # the classifier reads other embeddings
            model = _with_region_dim(cfg, model, centroids.shape[1])
        model.class_centroids.copy_(centroids.to(device))
        if cfg.acseg.classifier.regions == "mean" and cfg.acseg.classifier.region_features != cfg.features.type:
            facts["region_means"] = RegionFeatures.split_means(cfg)
        if self.overcluster_k(cfg):  # a second classifier with K' > classes, for the over-clustering metric
            facts["overcluster_centroids"], _ = classifier_centroids(cfg, model, cluster, self.overcluster_k(cfg),
                                                                     seed, device)
        return Fitted(model, facts, history, {"concept_regions": n_regions},
                      f"ACSeg {cfg.acseg.loss} loss, k={cfg.acseg.prototypes}, seed {seed}")

    def build(self, cfg: Config, facts: dict[str, Any]) -> ACSeg:
        return build_model(_trained_as(cfg, facts), facts["feature_dim"], facts["n_clusters"],
                           region_dim=facts.get("region_dim"))

    def predictor(self, cfg, model, facts, device, split) -> Predictor:
        return ACSegPredictor(model, region_encoder(cfg, split, device, facts, stream=True))

    def overcluster_predictor(self, cfg, model, facts, device, split) -> Predictor:
        k = self.overcluster_k(cfg)
        centroids = facts.get("overcluster_centroids")
        if centroids is None or centroids.shape[0] != k - int(model.background):
            raise FileNotFoundError(f"the model has no over-clustering classifier with K'={k}: train it again with "
                                    f"acseg.classifier.overcluster_k={k}")
        over = build_model(_trained_as(cfg, facts), facts["feature_dim"], k, region_dim=facts.get("region_dim"))
        over.load_state_dict({**model.state_dict(), "class_centroids": centroids})
        return ACSegPredictor(over.to(device).eval(), region_encoder(cfg, split, device, facts, stream=True))


def _trained_as(cfg: Config, facts: dict[str, Any]) -> Config:
    """``cfg`` with the arithmetic the saved model was trained under (its LayerNorms; models from before the option:
    native), so that a model is evaluated with the functions it was trained with."""

    trained = facts.get("arithmetic", "native")
    return cfg if trained == cfg.acseg.arithmetic else with_overrides(cfg, {"acseg.arithmetic": trained})


register_method(ACSegMethod())
