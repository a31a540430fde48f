"""Training ACSeg on cached features: the concept generator by its loss, then the concept classifier.

The whole loop is :func:`train_generator`; :func:`fit_classifier` runs k-means over the concept regions of the
training split; :func:`train_acseg` does both and is what the CLI and DVC call.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from acseg.assignment import cosine_assignment, hard_assignment
from acseg.classifier import background_concepts, fit_concept_classifier
from acseg.concept_generator import ConceptGenerator
from acseg.losses import concept_loss
from acseg.model import ACSeg
from bench.config import Config
from bench.features import CachedFeatures

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops instead of writing garbage."""


@dataclass
class TrainHistory:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps[-1] / self.seconds if self.seconds and self.steps else float("nan")


def build_model(cfg: Config, feature_dim: int, feature_mean: torch.Tensor, n_classes: int) -> ACSeg:
    a = cfg.acseg
    generator = ConceptGenerator(feature_dim, a.prototypes, a.depth, a.width, a.heads, a.mlp_width, a.self_attention)
    return ACSeg(generator, feature_mean, n_classes, cosine=cfg.classifier.cosine,
                 raw_regions=cfg.classifier.raw_regions, background=cfg.classifier.background == "cls_attention")


def feature_mean(features: torch.Tensor, centre: bool) -> torch.Tensor:
    """The training split's mean feature (raw DINO tokens share a large common component), or zeros."""
    d = features.shape[-1]
    if not centre:
        return torch.zeros(d)
    return features.reshape(-1, d).float().mean(0)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_generator(
    cfg: Config, seed: int, train: CachedFeatures, n_classes: int, device: torch.device, progress: bool = True
) -> tuple[ACSeg, TrainHistory]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    feats = train.features  # [N, h, w, d] float16, stays on the CPU
    n_images, h, w, d = feats.shape
    bad = ~torch.isfinite(feats).flatten(1).all(1)
    if bad.any():  # one such image would spoil every image through the centring mean
        names = [train.names[i] for i in bad.nonzero().flatten().tolist()]
        raise TrainingDiverged(f"the cached features of {len(names)} image(s) hold NaN or inf values, e.g. "
                               f"{names[:3]}: delete the feature cache entry and extract it again")
    model = build_model(cfg, d, feature_mean(feats, cfg.acseg.centre), n_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel (one pass over all parameters) is 4-5x faster than the per-tensor loop on a CPU
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            fused=device.type in ("cpu", "cuda"))
    history, t, start = TrainHistory(), cfg.train, time.perf_counter()
    n_pix, samples = h * w, cfg.train.pixel_samples
    for step in tqdm(range(t.steps), desc="train acseg", disable=not progress, unit="step"):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = torch.randint(n_images, (t.batch_size,), generator=generator)
        x = model.prepare(feats[batch].to(device))
        similarity = cosine_assignment(x, model.generator(x))
        if 0 < samples < n_pix:  # the loss on a random subset of pixels: O(P^2) instead of O(n^2)
            idx = torch.rand(t.batch_size, n_pix, generator=generator).argsort(-1)[:, :samples].to(device)
            x = torch.gather(x, 1, idx[..., None].expand(-1, -1, d))
            similarity = torch.gather(similarity, 1, idx[..., None].expand(-1, -1, similarity.shape[-1]))
        loss = concept_loss(cfg.acseg.loss, x, similarity, **_loss_kwargs(cfg))
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at step {step} (lr {lr_at(step, cfg):.2e}); "
                                   "lower train.lr or raise train.warmup_steps")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        if step % t.log_every == 0 or step == t.steps - 1:
            history.steps.append(step + 1)
            history.loss.append(loss.item())
            history.lr.append(lr_at(step, cfg))
    history.seconds = time.perf_counter() - start
    return model, history


def _loss_kwargs(cfg: Config) -> dict:
    return {"temperature": cfg.acseg.soft_temperature} if cfg.acseg.loss == "soft_modularity" else {}


@torch.no_grad()
def collect_regions(model: ACSeg, feats: torch.Tensor, device: torch.device, batch_size: int = 16,
                    cls_attention: torch.Tensor | None = None, names: list[str] | None = None,
                    crops: Callable | None = None, progress: bool = False):
    """Region embeddings [M, D] and pixel counts [M] of every concept that wins a patch, over a whole split.

    The embedding is the region's mean feature, or with ``crops`` (a :class:`bench.crops.CropEncoder`, which
    needs the images' ``names``) the [CLS] of its re-encoded crop. With ``cls_attention`` [N, heads, h, w] (the
    background split), background concepts are left out."""
    model.eval()
    embeddings, sizes = [], []
    for start in tqdm(range(0, feats.shape[0], batch_size), desc="concept crops", disable=not progress,
                      unit="batch"):
        part = feats[start : start + batch_size].to(device)
        emb, counts, s = model.regions(part)
        if crops is not None:
            emb = crops(model, part, names[start : start + batch_size])
        keep = counts > 0
        if cls_attention is not None:
            attention = cls_attention[start : start + batch_size].to(device)
            keep &= ~background_concepts(attention, hard_assignment(s), model.generator.n_prototypes)
        embeddings.append(emb[keep].cpu())
        sizes.append(counts[keep].cpu())
    return torch.cat(embeddings), torch.cat(sizes)


def classifier_centroids(cfg: Config, model: ACSeg, feats: CachedFeatures, n_classes: int, seed: int,
                         device: torch.device, progress: bool = False) -> tuple[torch.Tensor, int]:
    """k-means over a split's concept regions into K classes (K-1 and background with the background split):
    (centroids, number of regions). The regions are what classifier.regions says: means or re-encoded crops."""
    attention = feats.cls_attention if model.background else None
    crops = None
    if cfg.classifier.regions == "crops":
        from bench.crops import CropEncoder

        crops = CropEncoder(cfg, feats.meta["split"], device)
    regions, sizes = collect_regions(model, feats.features, device, cls_attention=attention, names=feats.names,
                                     crops=crops, progress=progress and crops is not None)
    k = n_classes - int(model.background)
    if regions.shape[0] < k:
        raise TrainingDiverged(f"only {regions.shape[0]} concept regions over the training split, fewer than "
                               f"K={k} classes: the concepts collapsed")
    c = cfg.classifier
    result = fit_concept_classifier(regions, k, seed=seed, cosine=c.cosine, iters=c.iters, n_init=c.n_init,
                                    weights=sizes if c.weighted else None)
    return result.centroids, regions.shape[0]


def fit_classifier(cfg: Config, model: ACSeg, train: CachedFeatures, n_classes: int, seed: int,
                   device: torch.device, progress: bool = False) -> int:
    """k-means over the training split's concept regions into K classes; returns the number of regions."""
    centroids, n_regions = classifier_centroids(cfg, model, train, n_classes, seed, device, progress)
    model.class_centroids.copy_(centroids.to(device))
    return n_regions


def train_acseg(cfg: Config, seed: int, train: CachedFeatures, n_classes: int, device: torch.device,
                progress: bool = True, cluster: CachedFeatures | None = None) -> tuple[ACSeg, TrainHistory, int]:
    """Train the generator on ``train``; fit the classifier on ``cluster`` (default: the same features)."""
    model, history = train_generator(cfg, seed, train, n_classes, device, progress)
    n_regions = fit_classifier(cfg, model, cluster or train, n_classes, seed, device, progress)
    return model, history, n_regions
