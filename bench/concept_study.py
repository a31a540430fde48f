"""The concept-generator study: ACSeg's concept claim, tested on its own terms.

ACSeg's claim is about its concept step: the Adaptive Concept Generator (ACG) partitions an image into better
concepts than clustering each image on its own. Whole pipelines cannot show it, because the dataset-level concept
classifier caps them all. Here every registered concept generator cuts the same cached features into concepts,
and the SAME concept classifier, ACSeg's (:func:`acseg.classifier.fit_concept_classifier` over the region
embeddings of the cluster split, with the ``acseg.classifier`` settings; :func:`acseg.classifier.classify_concepts`
on the evaluation split), gives each concept a class; every pixel takes its concept's class. Per generator and
seed, on the evaluation split:

- ``miou``: through that classifier (Hungarian matching on the split's confusion matrix, the protocol's metric);
- ``oracle_miou``: every concept takes its majority true class (labels diagnose the partition, choose nothing);
- ``retrieval_top<k>``: concept retrieval (:mod:`acseg.retrieval`) over the same region embeddings;
- ``concepts_per_image``, ``images_per_s`` (the concept step alone, timed over the evaluation split) and
  ``flops_per_image`` (matrix products counted by torch's FlopCounterMode on the first batch, plus an estimate of
  the eigendecompositions, which it does not count).

Concept ids reach the label resolution the same way for every generator: each concept's indicator upsampled
bilinearly, argmax (:func:`acseg.generators.segment_scores`); ACSeg's own evaluation upsamples its cosine maps, so
its row here can differ slightly from its results.csv row. The ACG is ACSeg's trained model of the same seed
(``runs/<dataset>/acseg/seed<N>/model.pt``, trained by the main benchmark).

The generators are the registry of :mod:`bench.generators`; the study's settings are the ``generators`` section.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from acseg.assignment import channel_argmax, concepts_per_image
from acseg.classifier import background_concepts, classify_concepts, fit_concept_classifier, region_embeddings
from acseg.features import centred_pixels
from acseg.generators import segment_scores
from acseg.metrics import ConfusionAccumulator, hungarian_miou
from acseg.retrieval import majority_classes, region_class_counts, retrieval_accuracy
from bench.config import Config, GeneratorsConfig, identity_hash
from bench.data import SegmentationSplit, dataset_spec, locate, write_csv_atomic
from bench.features import CachedFeatures, load_features, resolve_device
from bench.generators import ConceptStep, get_generator
from bench.methods.base import feature_mean
from bench.runs import training_threads
from bench.timing import matmul_flops, timed

log = logging.getLogger(__name__)


def _batches(feats: CachedFeatures, batch_size: int):
    """The split's images, ``batch_size`` consecutive ones at a time, split by patch grid."""
    for start in range(0, len(feats), batch_size):
        yield from feats.groups(range(start, min(start + batch_size, len(feats))))


def counted_flops(step: ConceptStep, features: torch.Tensor) -> float:
    """FLOPs per image of the concept step on a batch [B, h, w, d]: FlopCounterMode's matrix products, plus what
    the step declares it does not count (its eigendecompositions)."""
    b, h, w, _ = features.shape
    return matmul_flops(lambda: step.assign(features)) / b + step.uncounted_flops(h * w)


def _regions(step: ConceptStep, features: torch.Tensor, ids: torch.Tensor, raw_regions: bool):
    """Region-mean embedding of every concept (as ACSeg's classifier sees its own): ([B, S, d], counts [B, S])."""
    x = centred_pixels(features, step.feature_mean)
    return region_embeddings(x + step.feature_mean if raw_regions else x, ids, step.slots)


@torch.no_grad()
def fit_classifier(cfg: Config, step: ConceptStep, cluster: CachedFeatures, n_classes: int, seed: int,
                   device: torch.device, batch_size: int):
    """ACSeg's concept classifier over this generator's concepts of the cluster split -> (centroids, regions)."""
    c = cfg.acseg.classifier
    background = c.background == "cls_attention"
    embeddings, sizes = [], []
    for images in _batches(cluster, batch_size):
        features = images.features.to(device)
        ids = step.assign(features)
        emb, counts = _regions(step, features, ids, c.raw_regions)
        keep = counts > 0
        if background:
            keep &= ~background_concepts(images.cls_attention.to(device), ids, step.slots)
        embeddings.append(emb[keep].cpu())
        sizes.append(counts[keep].cpu())
    regions, sizes = torch.cat(embeddings), torch.cat(sizes)
    k = n_classes - int(background)
    if regions.shape[0] < k:
        raise ValueError(f"only {regions.shape[0]} concept regions over the cluster split, fewer than K={k} classes")
    result = fit_concept_classifier(regions, k, seed=seed, cosine=c.cosine, iters=c.iters, n_init=c.n_init,
                                    weights=sizes if c.weighted else None)
    return result.centroids.to(device), regions.shape[0]


@torch.no_grad()
def evaluate_generator(cfg: Config, step: ConceptStep, cluster: CachedFeatures, evaluation: CachedFeatures, spec,
                       read_label: Callable[[str], np.ndarray], seed: int, device: torch.device,
                       settings: GeneratorsConfig) -> dict:
    """One generator and seed: the classifier fitted on the cluster split, then every measure on the evaluation
    split (see the module's docstring)."""
    c = cfg.acseg.classifier
    if c.regions != "mean":
        raise ValueError("the generator study classifies region means: acseg.classifier.regions must be 'mean'")
    n_classes = c.n_classes or spec.n_classes
    background = c.background == "cls_attention"
    centroids, cluster_regions = fit_classifier(cfg, step, cluster, n_classes, seed, device, settings.batch_size)
    first = next(_batches(evaluation, settings.batch_size)).features.to(device)
    flops = counted_flops(step, first)  # also the warm-up of the timed calls
    confusion = ConfusionAccumulator(n_classes, spec.n_classes, spec.ignore_index)
    oracle = ConfusionAccumulator(spec.n_classes, spec.n_classes, spec.ignore_index)
    found: dict[str, list[torch.Tensor]] = {"embeddings": [], "images": [], "classes": []}
    counts_per_image, seconds, image = [], 0.0, 0
    for images in _batches(evaluation, settings.batch_size):
        features = images.features.to(device)
        ids, took = timed(lambda: step.assign(features), device)
        seconds += took
        b, h, w, _ = features.shape
        emb, counts = _regions(step, features, ids, c.raw_regions)
        present = counts > 0
        concept_classes = classify_concepts(emb, centroids, c.cosine)
        if background:
            is_background = background_concepts(images.cls_attention.to(device), ids, step.slots)
            concept_classes = concept_classes.masked_fill(is_background, n_classes - 1)
        counts_per_image.append(concepts_per_image(ids, step.slots).cpu())
        segments = ids.reshape(b, h, w)
        for i, name in enumerate(images.names):
            label = torch.from_numpy(read_label(name)).to(device)
            pixels = channel_argmax(segment_scores(segments[i:i + 1], step.slots, tuple(label.shape)))[0]
            confusion.update(concept_classes[i][pixels], label)
            region_counts = region_class_counts(pixels[None], label[None], step.slots, spec.n_classes,
                                                spec.ignore_index)[0]
            majority = majority_classes(region_counts)
            oracle.update(majority.clamp_min(0)[pixels], label)  # a concept with no labelled pixel: all void
            found["embeddings"].append(emb[i][present[i]].cpu())
            found["classes"].append(majority[present[i]].cpu())
            found["images"].append(torch.full((int(present[i].sum()),), image))
            image += 1
    retrieval = retrieval_accuracy(*(torch.cat(found[k]) for k in ("embeddings", "images", "classes")),
                                   tuple(settings.retrieval_k))
    scores = hungarian_miou(confusion.matrix.numpy())
    per_image = torch.cat(counts_per_image).float()
    return {"miou": scores.miou, "acc": scores.accuracy, "oracle_miou": hungarian_miou(oracle.matrix.numpy()).miou,
            **{f"retrieval_top{k}": v for k, v in retrieval.items()},
            "concepts_per_image": per_image.mean().item(), "concepts_per_image_std": per_image.std().item()
            if per_image.numel() > 1 else 0.0,
            "images_per_s": image / seconds if seconds > 0 else float("nan"), "flops_per_image": flops,
            "regions_cluster": cluster_regions, "regions_eval": int(sum(len(e) for e in found["classes"])),
            "n_images": image}


def settings_hash(settings: GeneratorsConfig) -> str:
    """A short stable hash of the study's settings (the section is a plan, not part of the Config's identity)."""
    return identity_hash(settings.model_dump())


def run_generators(cfg: Config, seeds: list[int] | None = None, progress: bool = True,
                   settings: GeneratorsConfig | None = None) -> Path:
    """Every generator of ``generators.names`` x seed (default: benchmark.seeds) on the config's dataset, written
    to ``<generators.out_dir>/<dataset>.csv`` (atomically); returns its path. The ACG rows need ACSeg's trained
    runs of the same seeds. Runs on run.train_threads torch threads: the k-means' float sums, hence the numbers,
    depend on the thread count, as training's do."""
    settings = settings or cfg.generators
    seeds = list(seeds if seeds is not None else cfg.benchmark.seeds)
    spec, device = dataset_spec(cfg), resolve_device(cfg.run.device)
    generators = [get_generator(name) for name in settings.names]
    train = load_features(cfg, cfg.data.train_split)
    cluster = train if cfg.data.cluster_split == cfg.data.train_split else load_features(cfg, cfg.data.cluster_split)
    evaluation = load_features(cfg, cfg.data.eval_split)
    labels = SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), cfg.data.eval_split)
    mean = feature_mean(train, cfg.acseg.centre)
    rows = []
    with training_threads(cfg) as threads:
        runs = [(g, seed) for g in generators for seed in seeds]
        for generator, seed in tqdm(runs, desc=f"concept generators {spec.name}", disable=not progress, unit="run"):
            step = generator.build(cfg, settings, seed, device, mean)
            measured = evaluate_generator(cfg, step, cluster, evaluation, spec, labels.read_label, seed, device,
                                          settings)
            log.info("%s seed %d on %s: mIoU %.2f, oracle %.2f, retrieval top-1 %.2f", generator.name, seed,
                     spec.name, measured["miou"], measured["oracle_miou"], measured.get("retrieval_top1", math.nan))
            rows.append({"dataset": spec.name, "split": cfg.data.eval_split, "generator": generator.name,
                         "seed": seed, **measured, "backbone": cfg.backbone.name, "feature_type": cfg.features.type,
                         "resolution": f"{cfg.features.height}x{cfg.features.width}", "torch_threads": threads,
                         "device": str(device), "config_hash": cfg.hash(), "settings_hash": settings_hash(settings)})
    out = Path(settings.out_dir) / f"{spec.name}.csv"
    write_csv_atomic(out, pd.DataFrame(rows))
    return out


def read_generator_results(out_dir: str | Path) -> pd.DataFrame:
    """Every dataset's CSV under ``generators.out_dir``, stacked (empty when there is none)."""
    files = sorted(Path(out_dir).glob("*.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else pd.DataFrame()
