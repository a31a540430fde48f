"""The concept step's speed and work: ACSeg's concept step against per-image k-means (scikit-learn's, one image at
a time, the paper's comparison; and the study's own k-means generator, batched like the concept step), each with
its FLOPs per image; and the images/s and FLOPs of every concept generator of the study (bench.generators).

Every k-means timed here is code the pipeline runs: the study's ``kmeans`` generator
(:func:`acseg.generators.kmeans_concepts`, i.e. :func:`acseg.batched_kmeans.batched_kmeans` with ``cosine=True``
and the ``generators.kmeans`` settings) built from the generator registry, and scikit-learn's ``KMeans``.

The FLOP counts: matrix products exactly (a multiply-add is 2 FLOPs; tests/bench/test_perf.py checks them against
torch's FLOP counter), element-wise work to first order (LayerNorm 5 per element, softmax 4 per logit, L2
normalisation 3 per element, argmax/min/subtraction 1 per element).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from acseg.assignment import hard_assignment
from bench.concept_study import _batches, counted_flops
from bench.config import Config, GeneratorsConfig
from bench.features import CachedFeatures, resolve_device
from bench.generators import ConceptStep, generator_title, get_generator
from bench.generators.acg import acg_step
from bench.methods.base import feature_mean
from bench.perf.common import EVAL_BATCH, concept_model, prepared_batches
from bench.timing import Measure, matmul_flops, rate

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- FLOP counts


def concept_step_flop_terms(generator, n: int, d: int) -> tuple[float, float]:
    """(matrix-product FLOPs, element-wise FLOPs) of the concept step on one image of ``n`` patches of dimension
    ``d``: centring, the concept generator (pixel projection, per block cross-attention in the pixel space,
    self-attention and MLP, output projection), the cosine assignment and its argmax. With k prototypes, width w,
    h heads, MLP width m, L blocks:
    matrix products 2ndw + L(4khnw + 8kw^2 + [8kw^2 + 4k^2w] + 4kwm) + 2kwd + 2nkd,
    element-wise nd + 5nw + L(4khn + 15kw) + 5kw + 3nd + 3kd + nk (the bracket: with self-attention)."""
    k = generator.n_prototypes
    w = generator.norm_pixels.normalized_shape[0]
    matmul = 2 * n * d * w if isinstance(generator.pixels_in, torch.nn.Linear) else 0
    elementwise = n * d + 5 * n * w  # centring, pixel LayerNorm
    for block in generator.blocks:
        h = block.cross_attn.heads
        m = block.mlp[0].out_features
        # cross-attention: q (2kw^2), q W_k (2kw^2), logits (2khnw), attended pixels (2khnw), W_v (2kw^2), out (2kw^2)
        matmul += 4 * k * h * n * w + 8 * k * w * w
        elementwise += 4 * k * h * n + 5 * k * w
        if block.self_attention:  # in-projection (6kw^2), logits and values (4k^2w), out-projection (2kw^2)
            matmul += 8 * k * w * w + 4 * k * k * w
            elementwise += 5 * k * w
        matmul += 4 * k * w * m
        elementwise += 5 * k * w
    matmul += 2 * k * w * d + 2 * n * k * d  # projection back to the feature space, cosine assignment
    elementwise += 5 * k * w + 3 * n * d + 3 * k * d + n * k  # output LayerNorm, normalisations, argmax
    return float(matmul), float(elementwise)


def concept_step_flops(generator, n: int, d: int) -> float:
    """FLOPs of the concept step on one image (:func:`concept_step_flop_terms`, both terms)."""
    return sum(concept_step_flop_terms(generator, n, d))


def kmeans_flop_terms(n: int, d: int, k: int, iterations: int, restarts: int = 1) -> tuple[float, float]:
    """(matrix-product, element-wise) FLOPs of :func:`acseg.batched_kmeans.batched_kmeans` with ``cosine=True`` on
    one image, ``restarts`` runs (n_init) of ``iterations`` Lloyd iterations in all: L2 normalisation once; per run
    the k-means++ draws (one cosine column, a running minimum and a cumulative sum per drawn centre), the spread
    of the points (the stopping rule's scale) and the final assignment with its inertia; per Lloyd iteration the
    scores, the argmax, the one-hot membership, the centroid sums (a matrix product) and counts, the normalisation
    and the shift. Matrix products 4nkd I + 2nkd R; element-wise 3nd + R((k-1)(2nd + 5n) + 5nd + 2nk + 2n)
    + I(4nk + 8kd)."""
    matmul = iterations * 4 * n * k * d + restarts * 2 * n * k * d
    elementwise = (3 * n * d + restarts * ((k - 1) * (2 * n * d + 5 * n) + 5 * n * d + 2 * n * k + 2 * n)
                   + iterations * (4 * n * k + 8 * k * d))
    return float(matmul), float(elementwise)


def kmeans_flops(n: int, d: int, k: int, iterations: int, restarts: int = 1) -> float:
    return sum(kmeans_flop_terms(n, d, k, iterations, restarts))


def kmeans_iterations(matmul: float, n: int, d: int, k: int, restarts: int = 1) -> int:
    """The Lloyd iterations (over all restarts) that :func:`kmeans_flop_terms`'s matrix products imply: the
    batched k-means does not report how many it ran, torch's FLOP counter sees them."""
    return round((matmul / (2 * n * k * d) - restarts) / 2)


def sklearn_kmeans_flops(n: int, d: int, k: int, iterations: int, local_trials: int) -> float:
    """FLOPs of scikit-learn's KMeans (lloyd, one k-means++ run) on one image: L2 normalisation, centring and
    squared norms, greedy k-means++ (a distance column for the first centre, then ``local_trials`` candidate
    columns per centre), ``iterations`` Lloyd iterations (distances by GEMM, argmin, centroid sums) and the
    final E-step: 6nd + (1 + (k-1)t)(2nd + 3n) + I(2nkd + 2nk + nd) + 2nkd + 2nk."""
    return float(6 * n * d + (1 + (k - 1) * local_trials) * (2 * n * d + 3 * n)
                 + iterations * (2 * n * k * d + 2 * n * k + n * d) + 2 * n * k * d + 2 * n * k)


# ------------------------------------------------------------------------------------------- the concept step


def concept_step(model, features: torch.Tensor) -> torch.Tensor:
    """ACSeg's concept step at inference: concepts of each image, cosine assignment, argmax -> [B, n]."""
    _, similarity = model.assign(features)
    return hard_assignment(similarity)


def measure_concept_step(model, feats: CachedFeatures, device: torch.device, min_seconds: float,
                         model_source: str) -> Measure:
    log.info("perf: concept step on %d images in batches of %d", len(feats.names), EVAL_BATCH)
    batches = prepared_batches(feats, device)

    def run():
        with torch.no_grad():
            for b in batches:
                concept_step(model, b)

    return Measure("concept_step_images_per_s", rate(run, len(feats.names), device, min_seconds), "images/s",
                   f"in batches of {EVAL_BATCH} (how it runs): feature centring + concept generator forward + cosine "
                   f"assignment + argmax; {model_source}")


def concept_step_gflop(model, feats: CachedFeatures) -> Measure:
    g = model.generator
    flops = [concept_step_flops(g, h * w, feats.dim) for h, w in feats.grids.tolist()]
    k, w = g.n_prototypes, g.norm_pixels.normalized_shape[0]
    first = g.blocks[0] if len(g.blocks) else None
    shape = (f"k={k}, w={w}, L={len(g.blocks)}" + (f", h={first.cross_attn.heads}, m={first.mlp[0].out_features}"
                                                    if first is not None else "")
             + f", d={feats.dim}, n={feats.grid(0)[0] * feats.grid(0)[1]}")
    return Measure("concept_step_gflop_per_image", sum(flops) / len(flops) / 1e9, "GFLOP",
                   f"concept_step_flops from the model's shapes ({shape}): 2ndw + L(4khnw + 8kw^2 [+ 8kw^2 + 4k^2w: "
                   f"self-attention] + 4kwm) + 2kwd + 2nkd (matrix products) + nd + 5nw + L(4khn + 15kw) + 5kw + 3nd + "
                   f"3kd + nk (element-wise)")


# ---------------------------------------------------------------------------------------- per-image k-means


def kmeans_step(cfg: Config, model, device: torch.device) -> ConceptStep:
    """The study's per-image k-means generator (bench.generators ``kmeans``, seed 0) as the pipeline builds it,
    centring the features by the ACSeg model's mean, as the concept step does."""
    return get_generator("kmeans").build(cfg, cfg.generators, 0, device, model.feature_mean)


def measure_batched_kmeans(cfg: Config, model, feats: CachedFeatures, device: torch.device,
                           min_seconds: float) -> list[Measure]:
    """The pipeline's per-image k-means (:func:`kmeans_step`) into k segments per image, on the concept step's
    batches; its FLOPs from the Lloyd iterations torch's FLOP counter saw it run on each batch."""
    step, s = kmeans_step(cfg, model, device), cfg.generators.kmeans
    log.info("perf: batched k-means (k=%d) on %d images in batches of %d", step.slots, len(feats), EVAL_BATCH)
    batches = prepared_batches(feats, device)
    flops, iterations = [], []
    for features in batches:
        b, h, w, d = features.shape
        n, k = h * w, min(step.slots, h * w)
        with torch.no_grad():
            ran = kmeans_iterations(matmul_flops(lambda: step.assign(features)) / b, n, d, k, s.n_init)
        flops += [kmeans_flops(n, d, k, ran, s.n_init)] * b
        iterations += [ran] * b

    def run_all():
        with torch.no_grad():
            for features in batches:
                step.assign(features)

    n = len(feats)
    speed = Measure("batched_kmeans_images_per_s", rate(run_all, n, device, min_seconds), "images/s",
                    f"the study's kmeans generator as the pipeline runs it: acseg.generators.kmeans_concepts = "
                    f"acseg.batched_kmeans.batched_kmeans(cosine=True, n_init {s.n_init}, <= {s.iters} Lloyd "
                    f"iterations, its default tol) on the concept step's batches of {EVAL_BATCH} images at once, "
                    f"k={step.slots} (generators.kmeans.k, 0: acseg.prototypes), the same centred features")
    gflop = Measure("batched_kmeans_gflop_per_image", sum(flops) / n / 1e9, "GFLOP",
                    f"kmeans_flops with the Lloyd iterations the batches ran (from torch's count of their matrix "
                    f"products; mean {sum(iterations) / n:.1f}, max {max(iterations)} per image over {s.n_init} "
                    f"restart(s)): 4nkd I + 2nkd R (matrix products) + 3nd + R((k-1)(2nd + 5n) + 5nd + 2nk + 2n) + "
                    f"I(4nk + 8kd)")
    return [speed, gflop]


def sklearn_kmeans(x: torch.Tensor, k: int, seed: int = 0):
    """scikit-learn's KMeans (all its defaults but the seed) fitted on one image's patches [n, d], L2-normalised
    (as the cosine k-means); the fitted estimator (``labels_``, ``n_iter_``)."""
    from sklearn.cluster import KMeans

    return KMeans(k, random_state=seed).fit(F.normalize(x.float(), dim=-1).cpu().numpy())


def _prepared(model, feats: CachedFeatures, i: int, device: torch.device) -> torch.Tensor:
    """One image's patch features [n, d], centred as the concept step sees them."""
    return model.prepare(feats.take([i]).features.to(device))[0]


def measure_sklearn_kmeans_per_image(model, feats: CachedFeatures, k: int, device: torch.device,
                                     min_seconds: float, progress: bool = True) -> list[Measure]:
    """Per-image k-means as people run it: scikit-learn's KMeans at its current defaults, one image at a time."""
    import sklearn
    from threadpoolctl import threadpool_limits

    n = len(feats.names)
    log.info("perf: per-image scikit-learn k-means (k=%d) on %d images", k, n)
    with threadpool_limits(torch.get_num_threads()):
        fits = [sklearn_kmeans(_prepared(model, feats, i, device), k) for i in range(n)]
    local_trials = 2 + int(np.log(k))  # scikit-learn's greedy k-means++ candidates per centre
    flops = [sklearn_kmeans_flops(feats.grid(i)[0] * feats.grid(i)[1], feats.dim, k, int(f.n_iter_), local_trials)
             for i, f in enumerate(fits)]
    iterations = [int(f.n_iter_) for f in fits]
    p = fits[0].get_params()

    def run():
        with threadpool_limits(torch.get_num_threads()):  # scikit-learn's BLAS and OpenMP get torch's thread count
            for i in tqdm(range(n), desc="perf sklearn k-means", disable=not progress, unit="image", leave=False):
                sklearn_kmeans(_prepared(model, feats, i, device), k)

    speed = Measure("sklearn_kmeans_per_image_images_per_s", rate(run, n, device, min_seconds), "images/s",
                    f"one image at a time: sklearn.cluster.KMeans {sklearn.__version__} at its defaults "
                    f"(init {p['init']}, n_init {p['n_init']} = one run, algorithm {p['algorithm']}, max_iter "
                    f"{p['max_iter']}, tol {p['tol']:g}), k={k}, L2-normalised centred features")
    gflop = Measure("sklearn_kmeans_gflop_per_image", sum(flops) / n / 1e9, "GFLOP",
                    f"sklearn_kmeans_flops with each fit's n_iter_ (mean {sum(iterations) / n:.1f}, max "
                    f"{max(iterations)}), {local_trials} k-means++ candidates per centre: 6nd + (1 + (k-1)t)(2nd + "
                    f"3n) + I(2nkd + 2nk + nd) + 2nkd + 2nk")
    return [speed, gflop]


# -------------------------------------------------------------------------------------- the study's generators


def generator_perf_rows(cfg: Config, evaluated: CachedFeatures, train: CachedFeatures, min_seconds: float = 2.0,
                        settings: GeneratorsConfig | None = None) -> list[Measure]:
    """Images/s (batches of generators.batch_size, as the study batches them, repeated for ``min_seconds``) and
    FLOPs per image (:func:`bench.concept_study.counted_flops`, as the study counts them) of every generator of the
    study, seed 0, on the ``evaluated`` images (features centred by the mean of ``train``). The ACG is the trained
    seed-0 model, or an untrained one of the configured size (:func:`bench.perf.common.concept_model`)."""
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
