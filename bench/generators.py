"""The concept-generator study (issue 16): ACSeg's concept claim, tested on its own terms.

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

A generator is one :class:`ConceptGenerator` and one :func:`register_generator` call; settings come from the
``generators`` section (:class:`bench.config.GeneratorsConfig`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from acseg.assignment import channel_argmax, concepts_per_image
from acseg.classifier import background_concepts, classify_concepts, fit_concept_classifier, region_embeddings
from acseg.features import centred_pixels
from acseg.generators import (acg_concepts, adaptive_kmeans_concepts, kmeans_concepts, segment_scores,
                              spectral_concepts)
from acseg.metrics import ConfusionAccumulator, hungarian_miou
from acseg.retrieval import majority_classes, region_class_counts, retrieval_accuracy
from bench.config import Config, ConfigError
from bench.features import CachedFeatures
from bench.config import GeneratorsConfig
from bench.registry import Registry
from bench.stats import format_p, format_summary, summarise, welch

log = logging.getLogger(__name__)


def eigh_flops(n: int) -> float:
    """An estimate of one symmetric n x n eigendecomposition with eigenvectors: ~9 n^3 (Golub & Van Loan,
    tridiagonalisation plus implicit QR with the vectors accumulated). FlopCounterMode does not count it."""
    return 9.0 * n ** 3


@dataclass
class ConceptStep:
    """A generator ready to run: cached features [B, h, w, d] -> concept id of each patch [B, h * w] in [0, slots)."""

    assign: Callable[[torch.Tensor], torch.Tensor]
    slots: int  # an upper bound on the ids
    feature_mean: torch.Tensor  # what the step subtracts from the features (the region embeddings start from it)
    uncounted_flops: Callable[[int], float] = field(default=lambda n: 0.0)  # per image of n patches


class ConceptGenerator:
    """One concept generator of the study; subclasses are registered with :func:`register_generator`."""

    name: str = ""
    title: str = ""

    def build(self, cfg: Config, settings: GeneratorsConfig, seed: int, device: torch.device,
              feature_mean: torch.Tensor) -> ConceptStep:
        """The step for ``seed``. ``feature_mean``: the training split's mean feature (zeros unless acseg.centre),
        what ACSeg's concept step subtracts, so every generator sees its input."""
        raise NotImplementedError


GENERATORS: Registry[ConceptGenerator] = Registry("concept generator", ConfigError)
register_generator = GENERATORS.register
get_generator = GENERATORS.lookup


def _or_prototypes(value: int, cfg: Config) -> int:
    return value or cfg.acseg.prototypes


def acg_step(model) -> ConceptStep:
    """The concept step of a trained :class:`acseg.model.ACSeg` (its own centring, its own prototypes). Its
    parameters are frozen: inference only, and torch's FlopCounterMode fails on modules whose parameters require
    gradients under no_grad."""
    model.requires_grad_(False)
    return ConceptStep(lambda f: acg_concepts(model.generator, model.prepare(f)), model.generator.n_prototypes,
                       model.feature_mean)


class ACGGenerator(ConceptGenerator):
    name = "acg"
    title = "ACSeg's ACG"

    def build(self, cfg, settings, seed, device, feature_mean):
        from bench.runs import load_fitted

        return acg_step(load_fitted(cfg, "acseg", seed, device)[0])


class KMeansGenerator(ConceptGenerator):
    name = "kmeans"
    title = "per-image k-means"

    def build(self, cfg, settings, seed, device, feature_mean):
        s, mean = settings.kmeans, feature_mean.to(device)
        k = _or_prototypes(s.k, cfg)
        return ConceptStep(lambda f: kmeans_concepts(centred_pixels(f, mean), min(k, f.shape[1] * f.shape[2]), seed,
                                                     s.iters, s.n_init), k, mean)


class AdaptiveKMeansGenerator(ConceptGenerator):
    name = "kmeans_adaptive"
    title = "per-image k-means, adaptive k"

    def build(self, cfg, settings, seed, device, feature_mean):
        s, mean = settings.kmeans_adaptive, feature_mean.to(device)
        k_max = _or_prototypes(s.k_max, cfg)
        if s.k_min > k_max:
            raise ValueError(f"generators.kmeans_adaptive: k_min={s.k_min} > k_max={k_max}")

        def assign(f):
            n = f.shape[1] * f.shape[2]
            return adaptive_kmeans_concepts(centred_pixels(f, mean), min(s.k_min, n), min(k_max, n), s.criterion,
                                            seed, s.iters, s.n_init)

        extra = eigh_flops if s.criterion == "eigengap" else (lambda n: 0.0)
        return ConceptStep(assign, k_max, mean, extra)


class SpectralGenerator(ConceptGenerator):
    name = "spectral"
    title = "per-image spectral clustering"

    def build(self, cfg, settings, seed, device, feature_mean):
        s, mean = settings.spectral, feature_mean.to(device)
        k = _or_prototypes(s.segments, cfg)
        vectors = s.eigenvectors or k

        def assign(f):
            n = f.shape[1] * f.shape[2]
            return spectral_concepts(centred_pixels(f, mean), min(k, n), min(vectors, n), seed, s.iters, s.n_init,
                                     s.normalised)

        return ConceptStep(assign, k, mean, eigh_flops)


for _generator in (ACGGenerator(), KMeansGenerator(), AdaptiveKMeansGenerator(), SpectralGenerator()):
    register_generator(_generator)


# ------------------------------------------------------------------------------------------------ measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(feats: CachedFeatures, batch_size: int):
    """The split's images, ``batch_size`` consecutive ones at a time, split by patch grid."""
    for start in range(0, len(feats), batch_size):
        yield from feats.groups(range(start, min(start + batch_size, len(feats))))


def counted_flops(step: ConceptStep, features: torch.Tensor) -> float:
    """FLOPs per image of the concept step on a batch [B, h, w, d]: FlopCounterMode's matrix products, plus what
    the step declares it does not count (its eigendecompositions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step.assign(features)
    b, h, w, _ = features.shape
    return counter.get_total_flops() / b + step.uncounted_flops(h * w)


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
        _sync(device)
        started = time.perf_counter()
        ids = step.assign(features)
        _sync(device)
        seconds += time.perf_counter() - started
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
    """A short stable hash of the study's settings (the section is not in the Config's identity yet)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


def run_generators(cfg: Config, seeds: list[int] | None = None, progress: bool = True,
                   settings: GeneratorsConfig | None = None) -> Path:
    """Every generator of ``generators.names`` x seed (default: benchmark.seeds) on the config's dataset, written
    to ``<generators.out_dir>/<dataset>.csv`` (atomically); returns its path. The ACG rows need ACSeg's trained
    runs of the same seeds. Runs on run.train_threads torch threads: the k-means' float sums, hence the numbers,
    depend on the thread count, as training's do."""
    from tqdm import tqdm

    from bench.data import SegmentationSplit, dataset_spec, locate, write_csv_atomic
    from bench.features import load_features, resolve_device
    from bench.methods.base import feature_mean
    from bench.runs import training_threads

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


# ------------------------------------------------------------------------------------------------ report

# The paper's numbers (docs/method.md), on PASCAL VOC: concept retrieval top-1 / top-5 and images/s.
PAPER_RETRIEVAL = {"acg": (57.8, 61.0), "kmeans": (45.1, 49.1), "spectral": (43.0, 47.3)}
PAPER_SPEED = {"acg": 149.2, "kmeans": 2.4, "spectral": 3.4}


def generator_title(name: str) -> str:
    return GENERATORS[name].title if name in GENERATORS else name


def _metric_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, heading) of the measures compared with the reference, in the table's order."""
    retrieval = sorted((c for c in df.columns if c.startswith("retrieval_top")), key=lambda c: int(c[13:]))
    return [("miou", "mIoU"), ("oracle_miou", "oracle mIoU")] + [(c, f"top-{c[13:]}") for c in retrieval]


def compare_with_reference(df: pd.DataFrame, reference: str = "acg") -> pd.DataFrame:
    """One dataset's rows -> per generator and measure: mean, std, seeds, the difference from the reference
    generator's mean and Welch's p over seeds (NaN for the reference itself or with too few seeds)."""
    if df.dataset.nunique() > 1:
        raise ValueError("a generator comparison holds one dataset: call it per dataset")
    rows = []
    for generator in dict.fromkeys(df.generator):
        g = df[df.generator == generator]
        for column, _ in _metric_columns(df):
            s = summarise(g[column].tolist())
            base = df[df.generator == reference][column].tolist()
            versus = welch(g[column].tolist(), base) if base and generator != reference else None
            rows.append({"generator": generator, "measure": column, "mean": s.mean, "std": s.std, "seeds": s.n,
                         "difference": versus.difference if versus else math.nan,
                         "p_value": versus.p_value if versus else math.nan})
    return pd.DataFrame(rows)


def generator_table(df: pd.DataFrame, reference: str = "acg") -> pd.DataFrame:
    """The report's table for one dataset: generator x (concepts per image, each measure as mean +- std with its
    difference from the reference and Welch's p, images/s, GFLOPs per image, seeds); * marks p < 0.05."""
    comparison = compare_with_reference(df, reference)
    rows = []
    for generator in dict.fromkeys(df.generator):
        g = df[df.generator == generator]
        row = {"generator": generator_title(generator), "concepts / image": f"{g.concepts_per_image.mean():.1f}"}
        for column, heading in _metric_columns(df):
            c = comparison[(comparison.generator == generator) & (comparison.measure == column)].iloc[0]
            row[f"{heading} (%)"] = format_summary(summarise(g[column].tolist()))
            if generator == reference:
                row[f"{heading} vs ACG"] = "(reference)"
            elif math.isnan(c.difference):
                row[f"{heading} vs ACG"] = "n/a"
            else:
                mark = "*" if c.p_value < 0.05 else ""
                row[f"{heading} vs ACG"] = f"{c.difference:+.2f}{mark} (p {format_p(c.p_value)})"
        row["images/s"] = f"{g.images_per_s.mean():.1f}"
        row["GFLOPs / image"] = f"{g.flops_per_image.mean() / 1e9:.3g}"
        row["seeds"] = g.seed.nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def concept_claim(df: pd.DataFrame, reference: str = "acg", measure: str = "retrieval_top1") -> str:
    """One dataset's verdict on the paper's concept claim, in plain words: does the reference's ``measure`` beat
    every per-image clustering baseline at p < 0.05 (holds), does some baseline beat it at p < 0.05 (does not
    hold), or neither (not shown)."""
    from bench.report import dataset_title

    comparison = compare_with_reference(df, reference)
    here = f"{dataset_title(df.dataset.iloc[0])} {df.split.iloc[0]}"
    if reference not in set(df.generator):
        return f"On {here} the reference generator {reference!r} was not measured: no verdict on the concept claim."
    mine = comparison[(comparison.generator == reference) & (comparison.measure == measure)].iloc[0]
    others = comparison[(comparison.generator != reference) & (comparison.measure == measure)]
    if others.empty:
        return f"On {here} no per-image clustering baseline was measured: no verdict on the concept claim."
    beaten = others[(others.difference < 0) & (others.p_value < 0.05)]
    better = others[(others.difference > 0) & (others.p_value < 0.05)]
    if len(beaten) == len(others):
        verdict = "holds here"
    elif not better.empty:
        verdict = "does not hold here"
    else:
        verdict = "is not shown here (no difference significant at p < 0.05 over these seeds)"
    strongest = others.loc[others["mean"].idxmax()]
    name = measure.replace("retrieval_top", "retrieval top-")

    def versus(column: str) -> str:
        means = comparison[comparison.measure == column].set_index("generator")["mean"]
        return f"{means[reference]:.1f} for ACSeg against " + ", ".join(
            f"{means[g]:.1f} for {generator_title(g)}" for g in means.index if g != reference)

    speed = df.groupby("generator", sort=False).images_per_s.mean()
    return (f"On {here}, the paper's concept claim (ACSeg's adaptive concepts are better than per-image clustering: "
            f"on VOC, retrieval top-1 57.8 against k-means 45.1 and spectral clustering 43.0) {verdict}: ACSeg's "
            f"concepts reach {name} {mine['mean']:.1f} %, the best per-image baseline "
            f"({generator_title(strongest.generator)}) {strongest['mean']:.1f} % (ACSeg "
            f"{-strongest.difference:+.1f} points from it, Welch p {format_p(strongest.p_value)}). Through the same "
            f"classifier the mIoU is {versus('miou')}; the oracle mIoU (partition quality) {versus('oracle_miou')}. "
            f"The concept step runs at " + ", ".join(f"{v:.1f} images/s for {generator_title(g)}"
                                                     for g, v in speed.items())
            + " (the paper: 149.2 for ACSeg, 2.4 for k-means, 3.4 for spectral clustering).")


def figure_retrieval(df: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Concept retrieval top-k of every generator (bars: mean over seeds, error bars: std), one dataset."""
    import seaborn as sns

    from bench.figures import pyplot

    columns = [c for c, _ in _metric_columns(df) if c.startswith("retrieval_top")]
    if df.empty or not columns:
        return None
    long = df.melt(id_vars=["generator", "seed"], value_vars=columns, var_name="k", value_name="retrieval")
    long["k"] = long.k.str.replace("retrieval_top", "top-", regex=False)
    long["generator"] = long.generator.map(generator_title)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.barplot(data=long, x="generator", y="retrieval", hue="k", errorbar="sd", capsize=0.1, ax=ax)
    ax.set_ylim(0, 100)
    ax.set_title(f"Concept retrieval, {title}")
    ax.set_xlabel("concept generator (same classifier, same region embeddings)")
    ax.set_ylabel("regions whose k-NN vote is their class (%)")
    ax.tick_params(axis="x", labelrotation=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def generators_report_lines(df: pd.DataFrame, figures: Path | None = None, reference: str = "acg") -> list[str]:
    """The report's section: per dataset (in the CSVs' order) the table, the retrieval figure (when ``figures``,
    the report's figures folder, is given; linked as figures/<name>) and the verdict in plain words."""
    from bench.report import dataset_title

    if df.empty:
        return []
    lines = ["## Concept generators through one classifier (the paper's concept claim)", "",
             "Each concept generator cuts the same cached features into concepts; ACSeg's own concept classifier "
             "(k-means over the region-mean embeddings of the cluster split, the `acseg.classifier` settings) gives "
             "each concept a class. mIoU: through that classifier; oracle mIoU: every concept takes its majority "
             "true class (labels diagnose only); top-k: concept retrieval, the share of evaluation regions whose k "
             "nearest regions of other images (cosine of the region embeddings) vote for their own majority "
             "class; images/s: the concept step alone, on the same features; GFLOPs: its matrix products per image "
             "(torch's FlopCounterMode) plus ~9 n^3 per eigendecomposition. Retrieval scores regions, not pixels: "
             "few large regions of a dominant class retrieve easily, so read it beside the concepts per image and "
             "the oracle mIoU. Each difference is from ACSeg's ACG over seeds (Welch); * marks p < 0.05. The paper "
             "(VOC): retrieval top-1/top-5 ACSeg "
             f"{PAPER_RETRIEVAL['acg'][0]}/{PAPER_RETRIEVAL['acg'][1]}, k-means {PAPER_RETRIEVAL['kmeans'][0]}/"
             f"{PAPER_RETRIEVAL['kmeans'][1]}, spectral {PAPER_RETRIEVAL['spectral'][0]}/"
             f"{PAPER_RETRIEVAL['spectral'][1]}; images/s {PAPER_SPEED['acg']} / {PAPER_SPEED['kmeans']} / "
             f"{PAPER_SPEED['spectral']}.", ""]
    for dataset, d in df.groupby("dataset", sort=False):
        title = f"{dataset_title(dataset)} {d.split.iloc[0]}"
        lines += [f"### {title}", "", generator_table(d, reference).to_markdown(index=False), ""]
        if figures is not None:
            figure = figure_retrieval(d, Path(figures) / f"concept_retrieval_{dataset}.png", title)
            if figure:
                lines += [f"![concept retrieval, {title}](figures/{figure.name})", ""]
        lines += [concept_claim(d, reference), ""]
    return lines


def read_generator_results(out_dir: str | Path) -> pd.DataFrame:
    """Every dataset's CSV under ``generators.out_dir``, stacked (empty when there is none)."""
    files = sorted(Path(out_dir).glob("*.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else pd.DataFrame()


# ---------------------------------------------------------------------------------------------------- perf


def generator_perf_rows(cfg: Config, evaluated: CachedFeatures, train: CachedFeatures, min_seconds: float = 2.0,
                        settings: GeneratorsConfig | None = None) -> list:
    """`acseg-bench perf` rows: images/s (batches of generators.batch_size, repeated for ``min_seconds``) and FLOPs
    per image of every generator of the study, seed 0, on the ``evaluated`` images (features centred by the mean of
    ``train``). The ACG is the trained seed-0 model, or an untrained one of the configured size
    (:func:`bench.perf.concept_model`)."""
    from bench.features import resolve_device
    from bench.methods.base import feature_mean
    from bench.perf import Measure, concept_model, rate

    settings = settings or cfg.generators
    device = resolve_device(cfg.run.device)
    mean = feature_mean(train, cfg.acseg.centre)
    batches = [g.features.to(device) for g in _batches(evaluated, settings.batch_size)]
    rows = []
    for name in settings.names:
        if name == "acg":
            model, _, source = concept_model(cfg, device, evaluated)
            step = acg_step(model)
        else:
            step, source = get_generator(name).build(cfg, settings, 0, device, mean), "seed 0"

        def run(step=step):
            with torch.no_grad():
                for b in batches:
                    step.assign(b)

        with torch.no_grad():
            flops = counted_flops(step, batches[0])
        rows += [Measure(f"generator_{name}_images_per_s", rate(run, len(evaluated), device, min_seconds), "images/s",
                         f"bench.generators: {generator_title(name)} ({source}), concept ids of the first "
                         f"{len(evaluated)} {cfg.data.eval_split} images in batches of {settings.batch_size}"),
                 Measure(f"generator_{name}_flops_per_image", flops, "FLOP",
                         "matrix products counted by torch.utils.flop_counter.FlopCounterMode on one batch, plus "
                         "~9 n^3 per eigendecomposition (not counted by it)")]
    return rows
