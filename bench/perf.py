"""The performance suite (`acseg-bench perf`): the speed and memory numbers of issue 17, measured side by side in
one run on the same images, so that their ratios hold on a noisy machine.

One function per measure, each returning :class:`Measure` rows; :func:`run_suite` runs them all and
:func:`write_report` writes ``performance.csv`` (``measure,value,unit``) and ``performance.md``.

- feature extraction: the real pipeline (:func:`bench.features.ensure_features`: decoding, resizing, the
  extractor with its hook and [CLS] attention, float16, the atomic cache write) on the evaluation split's first
  N images, into a temporary cache, against a bare loop of the same timm model's ``forward_features`` on the same
  images already resized and normalised, same sizes, batches and weights; one more pipeline round under cProfile
  says where the pipeline's time goes (``feature_pipeline_profile_*`` rows);
- ACSeg's inference after the backbone (concept step, concept classification, upsampling to the label resolution
  and the per-pixel argmax: the model's forward) on the cached features of the same N images, against the bare
  backbone forward of the feature measure (``acseg_inference_overhead``);
- the concept step (concept generator + cosine assignment + argmax) in batches, as it runs, against per-image
  scikit-learn ``KMeans`` at its current defaults (the paper's comparison) and against this harness's k-means
  (acseg/kmeans.py's algorithm) run on the same batches of images at once, each with its FLOP count per image;
- training steps per second of ACSeg and STEGO (their real loops, after warm-up steps);
- evaluation images per second with and without the dense CRF (:func:`bench.evaluate.evaluate`), and the peak
  resident memory of a whole streaming evaluation of N and 2N images, each in a fresh process;
- ``dvc repro`` wall times and the processor they were taken on, copied from ``reports/repro_timing.json``
  (``pipelines/time_repro.sh``) if present.

A split without a valid feature cache entry is not an error: the suite extracts the first images it needs of that
split (``--images`` of the evaluation split; 2 x ``--memory-images`` of the training split) into a temporary
cache of its own, on the configured device, and says so. The configured cache is only ever read.
"""

from __future__ import annotations

import cProfile
import csv
import json
import logging
import math
import os
import platform
import pstats
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.config import Config, with_overrides
from bench.data import atomic_path, write_text_atomic
from bench.features import CachedFeatures, load_features, read_features, resolve_device

log = logging.getLogger(__name__)

EVAL_BATCH = 8  # bench.evaluate.evaluate's batch size: the concept step runs on batches of this size
KMEANS_ITERS = 50  # this harness's per-image k-means (bench/diagnose.py): cosine, <= 50 Lloyd iterations
KMEANS_TOL = 1e-6  # acseg.kmeans.kmeans's default: stop when the centroids move less than this (squared)
FEATURE_OVERHEAD_TARGET = 1.10
INFERENCE_OVERHEAD_TARGET = 0.10
RSS_RATIO_TARGET = 1.10
TARGETS = {  # issue 17: each at most this
    "feature_overhead_ratio": FEATURE_OVERHEAD_TARGET,
    "acseg_inference_overhead": INFERENCE_OVERHEAD_TARGET,
    "eval_peak_rss_ratio_2x_split": RSS_RATIO_TARGET,
}
PROFILE_PREFIX = "feature_pipeline_profile_"
REQUIRED = (
    "features_pipeline_images_per_s", "features_bare_timm_images_per_s", "feature_overhead_ratio",
    "features_backbone_load_s",
    "acseg_inference_images_per_s", "acseg_inference_overhead",
    "concept_step_images_per_s", "sklearn_kmeans_per_image_images_per_s", "batched_kmeans_images_per_s",
    "concept_step_speedup_vs_sklearn_kmeans", "concept_step_speedup_vs_batched_kmeans",
    "concept_step_gflop_per_image", "sklearn_kmeans_gflop_per_image", "batched_kmeans_gflop_per_image",
    "acseg_train_steps_per_s", "stego_train_steps_per_s",
    "eval_images_per_s", "eval_crf_images_per_s",
    "eval_peak_rss_mb_1x", "eval_peak_rss_mb_2x", "eval_peak_rss_ratio_2x_split",
)


@dataclass
class Measure:
    """One row of performance.csv; ``note`` (how it was measured) goes to performance.md only."""

    measure: str
    value: float
    unit: str
    note: str = ""


def ratio(name: str, numerator: Measure, denominator: Measure, note: str = "") -> Measure:
    """A ratio of two measured rows (never timed on its own)."""
    return Measure(name, numerator.value / denominator.value, "x",
                   note or f"{numerator.measure} / {denominator.measure}")


# ------------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call (CUDA synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def rate(fn: Callable[[], object], items: int, device: torch.device, min_seconds: float) -> float:
    """Items per second of ``fn`` (which handles ``items`` items), repeated until ``min_seconds`` have passed."""
    total, calls = 0.0, 0
    while calls == 0 or total < min_seconds:
        total += seconds(fn, device)
        calls += 1
    return items * calls / total


@contextmanager
def step_clock(device: torch.device) -> Iterator[list[tuple[int, float]]]:
    """Timestamps (optimizer id, time) after every optimizer step taken inside the block (torch's global step
    hook), so a training loop can be timed step by step without changing it."""
    stamps: list[tuple[int, float]] = []

    def hook(optimizer, args, kwargs):
        _sync(device)
        stamps.append((id(optimizer), time.perf_counter()))

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield stamps
    finally:
        handle.remove()


def steps_per_second(stamps: list[tuple[int, float]], warmup: int, steps: int) -> float:
    """Steps per second from the end of step ``warmup`` to the end of step ``warmup + steps``; with several
    optimizers a step is timed by the first one that steps."""
    if warmup < 1:
        raise ValueError("timing training steps needs at least one warm-up step")
    first = stamps[0][0]
    ends = [t for opt, t in stamps if opt == first]
    return steps / (ends[warmup + steps - 1] - ends[warmup - 1])


# ------------------------------------------------------------------------------------------ shared inputs


def first_images(feats: CachedFeatures, n: int) -> CachedFeatures:
    if n > len(feats.names):
        raise ValueError(f"the performance suite asks for {n} images, but the cached split has only "
                         f"{len(feats.names)}: lower --images / --memory-images")
    end = int(feats.offsets[n])
    return CachedFeatures(feats.rows[:end], feats.attention_rows[:end], feats.grids[:n], feats.names[:n], feats.meta)


class _FirstImages:
    """A dataset's first ``n`` images of every split, under its own name (so its cache entry is its own)."""

    def __init__(self, spec, n: int):
        self._spec, self._n = spec, n
        self.name = f"{spec.name}-perf-first{n}"

    def __getattr__(self, attr):
        if attr.startswith("__") or attr in ("_spec", "_n"):  # copy/pickle probe before __init__ ran
            raise AttributeError(attr)
        return getattr(self._spec, attr)

    def bind(self, root):
        """The subset of the copy at ``root`` (the dataset's own bind would return the whole dataset)."""
        return _FirstImages(self._spec.bind(root), self._n)

    def samples(self, root, split):
        return self._spec.samples(root, split)[: self._n]


@contextmanager
def _registered(spec) -> Iterator[None]:
    from bench.datasets import DATASETS

    DATASETS[spec.name] = spec
    try:
        yield
    finally:
        DATASETS.pop(spec.name, None)


@contextmanager
def suite_features(cfg: Config, progress: bool = True) -> Iterator[Callable[[str, int], tuple[CachedFeatures, str]]]:
    """``get(split, count)`` -> (features, where they come from): the configured cache entry of the split (whole)
    when it is valid, else the split's first ``count`` images extracted now into a temporary cache of the suite's
    own (removed at the end), on the configured device. The configured cache is never written."""
    from bench import cache
    from bench.data import dataset_spec
    from bench.features import ensure_features

    with tempfile.TemporaryDirectory(prefix="acseg-perf-cache-") as tmp:
        def get(split: str, count: int) -> tuple[CachedFeatures, str]:
            path, meta = cache.cache_dir(cfg, split), cache.expected_meta(cfg, split)
            if cache.is_valid(path, meta):
                return load_features(cfg, split), f"feature cache {path}"
            subset = _FirstImages(dataset_spec(cfg), count)
            log.warning("perf: no feature cache of %s/%s at %s: extracting its first %d images for this run only",
                        cfg.data.dataset, split, path, count)
            with _registered(subset):
                sub = with_overrides(cfg, {"data.dataset": subset.name, "features.cache_dir": tmp})
                ensure_features(sub, split, progress=progress)
                feats = load_features(sub, split)
            return feats, (f"no feature cache of the split at {path}: its first {len(feats)} images extracted by "
                           f"this run (device {cfg.run.device})")

        yield get


def concept_model(cfg: Config, device: torch.device, feats: CachedFeatures):
    """(ACSeg model, trained?, where it came from): the trained model of seed 0, or an untrained one of the
    configured size when that is missing or does not load (the cost of inference does not depend on the
    weights)."""
    from bench.methods import get_method
    from bench.methods.acseg import build_model
    from bench.methods.base import feature_mean
    from bench.runs import load_fitted, run_dir

    path = run_dir(cfg, "acseg", 0) / "model.pt"
    reason = f"{path} is absent"
    if path.is_file():
        try:
            return load_fitted(cfg, "acseg", 0, device)[0], True, f"trained model {path}"
        except (RuntimeError, KeyError) as e:
            reason = f"{path} does not load with the current code ({type(e).__name__}: {str(e).splitlines()[0]})"
            log.warning("perf: %s; timing an untrained model of the configured size", reason)
    model = build_model(cfg, feats.dim, get_method("acseg").n_clusters(cfg), feature_mean(feats, cfg.acseg.centre))
    return model.to(device).eval(), False, f"untrained model of the configured size ({reason})"


def acseg_predictor(cfg: Config, device: torch.device, feats: CachedFeatures):
    """(predict for bench.evaluate.evaluate, model source): the evaluation's own predictor
    (bench.runs.build_predictor) for the trained model, the same wrapper around an untrained one otherwise."""
    from bench.methods.acseg import ACSegPredictor

    model, _, source = concept_model(cfg, device, feats)
    return ACSegPredictor(model), source


def _batches_of(feats: CachedFeatures, size: int = EVAL_BATCH, key: Callable[[int], object] = lambda i: None):
    """Index ranges of consecutive images with one patch grid (and one ``key``), at most ``size`` at a time."""
    out, first = [], 0
    for i in range(1, len(feats) + 1):
        if (i == len(feats) or i - first == size or feats.grid(i) != feats.grid(first)
                or key(i) != key(first)):
            out.append(range(first, i))
            first = i
    return out


# -------------------------------------------------------------------------------------- feature extraction


def _profile_stages(stats: pstats.Stats, total: float) -> dict[str, float]:
    """Seconds of each stage of one ``ensure_features`` call from its cProfile statistics (cumulative times of
    the functions that make each stage; ``other`` is what is left of ``total``; a stage whose function is not
    found, renamed say, reads 0 and its time goes to ``other``)."""
    def cumulative(path_end: str, function: str) -> float:
        return sum(v[3] for (file, _, name), v in stats.stats.items()
                   if name == function and file.replace(os.sep, "/").endswith(path_end))

    decode = cumulative("bench/data.py", "load_image")
    item = cumulative("bench/data.py", "__getitem__")  # decode + to float + resize
    batches = cumulative("bench/features.py", "_batches") or item  # the items + stacking them into batches
    load = cumulative("bench/backbones.py", "load_backbone")
    vit = cumulative("timm/models/vision_transformer.py", "forward_features")
    extractor = cumulative("acseg/features.py", "forward") or vit
    write = cumulative("bench/cache.py", "write_entry")
    stages = {
        "image_decoding": decode,
        "image_to_float_and_resize": item - decode,
        "batch_stacking": batches - item,
        "backbone_load_and_checksum": load,
        "vit_forward_features": vit,
        "extractor_cls_attention_and_keys": extractor - vit,
        "cache_write": write,
    }
    stages["other"] = total - (batches + load + extractor + write)
    return stages


def _image_batches(dataset, batch_size: int) -> list[torch.Tensor]:
    """The pipeline's batches (bench.features): consecutive images of one input size, at most ``batch_size``."""
    out: list[list[torch.Tensor]] = []
    for i in range(len(dataset)):
        image = dataset[i][0]
        if not out or image.shape != out[-1][0].shape or len(out[-1]) == batch_size:
            out.append([])
        out[-1].append(image)
    return [torch.stack(b) for b in out]


def measure_feature_extraction(cfg: Config, device: torch.device, n: int, repeats: int = 2,
                               progress: bool = True, profile: bool = True) -> list[Measure]:
    """The feature pipeline (ensure_features into a temporary cache) against a bare timm loop; best of
    ``repeats`` alternating runs each; then one profiled pipeline round (its stages, ms per image)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from bench.backbones import get_backbone_spec, load_backbone
    from bench.data import SegmentationSplit, dataset_spec, locate
    from bench.features import ensure_features, input_size

    spec = dataset_spec(cfg)
    split = cfg.data.eval_split
    subset = _FirstImages(spec, n)
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    patch = get_backbone_spec(cfg.backbone.name).patch_size
    # the sizes the pipeline gives each image (features.height x width, or its aspect with data.keep_aspect)
    dataset = SegmentationSplit(subset, root, split, size=lambda hw: input_size(hw, cfg, patch), with_labels=False)
    if len(dataset) < n:
        raise ValueError(f"--images {n}: split {split!r} has only {len(dataset)} images")
    log.info("perf: feature extraction, pipeline vs bare timm, %d %s images at %dx%d, batch %d, best of %d",
             n, split, cfg.features.height, cfg.features.width, cfg.features.batch_size, repeats)
    load_s = time.perf_counter()
    vit, _ = load_backbone(cfg.backbone)
    load_s = time.perf_counter() - load_s
    vit = vit.eval().to(device)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    # decoded, resized, normalised, batched as the pipeline batches them (consecutive images of one size)
    batches = [((b - mean) / std).to(device) for b in _image_batches(dataset, cfg.features.batch_size)]
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")

    def bare():
        with torch.inference_mode(), autocast:
            for b in batches:
                vit.forward_features(b)

    with torch.inference_mode(), autocast:
        vit.forward_features(batches[0])  # warm-up (one-off allocations), for both loops

    def pipeline():
        with tempfile.TemporaryDirectory(prefix="acseg-perf-features-") as tmp, _registered(subset):
            sub = with_overrides(cfg, {"data.dataset": subset.name, "features.cache_dir": tmp,
                                       "run.device": str(device)})
            ensure_features(sub, split, progress=False)

    bare_s, pipeline_s = [], []
    for _ in tqdm(range(repeats), desc="perf features", disable=not progress, unit="round"):
        bare_s.append(seconds(bare, device))
        pipeline_s.append(seconds(pipeline, device))
    size = (f"{cfg.features.height}x{cfg.features.width}" if not cfg.data.keep_aspect else
            f"about {cfg.features.height}x{cfg.features.width} in patches, each image its aspect")
    pipe = Measure("features_pipeline_images_per_s", n / min(pipeline_s), "images/s",
                   f"bench.features.ensure_features on the first {n} {split} images into a temporary cache "
                   f"(decoding, resizing, backbone load and checksum, extraction, float16, the atomic write of the "
                   f"entries it makes), best of {repeats}")
    bare_rate = Measure("features_bare_timm_images_per_s", n / min(bare_s), "images/s",
                        f"timm forward_features on the same {n} images already decoded, resized ({size}) and "
                        f"normalised, in the pipeline's batches (features.batch_size {cfg.features.batch_size}), "
                        f"same weights{', float16 autocast' if device.type == 'cuda' else ''}, best of {repeats}")
    rows = [pipe, bare_rate,
            ratio("feature_overhead_ratio", bare_rate, pipe,
                  f"pipeline time per image / bare time per image (target <= {FEATURE_OVERHEAD_TARGET})"),
            Measure("features_backbone_load_s", load_s, "s",
                    "bench.backbones.load_backbone once (sha256 of the weights file, timm model, state dict): "
                    "a fixed cost inside each pipeline run, not per image")]
    if profile:
        log.info("perf: one more pipeline round under cProfile")
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(pipeline)
        total = time.perf_counter() - start
        stages = _profile_stages(pstats.Stats(profiler), total)
        rows.append(Measure(f"{PROFILE_PREFIX}total_ms_per_image", 1000 * total / n, "ms/image",
                            f"one more pipeline round on the {n} images under cProfile (its overhead included)"))
        rows += [Measure(f"{PROFILE_PREFIX}{stage}_ms_per_image", 1000 * s / n, "ms/image", _STAGE_NOTES[stage])
                 for stage, s in stages.items()]
    return rows


_STAGE_NOTES = {
    "image_decoding": "reading and decoding the image files (bench.data.load_image: PIL, RGB)",
    "image_to_float_and_resize": "uint8 -> float in [0, 1] and the antialiased bilinear resize "
                                 "(bench.data.SegmentationSplit.__getitem__ less the decoding)",
    "batch_stacking": "torch.stack of consecutive images into batches (bench.features._batches less its items)",
    "backbone_load_and_checksum": "bench.backbones.load_backbone: a one-off cost per extraction, not per image",
    "vit_forward_features": "timm forward_features inside the extractor: the work the bare loop does",
    "extractor_cls_attention_and_keys": "acseg.features.ViTFeatures.forward less forward_features: input "
                                        "normalisation, the qkv hook's keys and the last layer's [CLS] attention",
    "cache_write": "bench.cache.write_entry of every entry made (safetensors to a temporary folder, rename)",
    "other": "the rest of the round: float16 conversion and copies to the CPU, torch.cat of the rows, the "
             "dataset check, locks, config",
}


# ---------------------------------------------------------------------------------------- ACSeg inference


def measure_acseg_inference(cfg: Config, model, feats: CachedFeatures, device: torch.device,
                            min_seconds: float, model_source: str) -> Measure:
    """ACSeg's whole inference after the backbone: the model's forward (concept step, concept classification,
    upsampling of the concept maps to each image's label resolution, per-pixel argmax, classes) in batches of
    EVAL_BATCH, on features already on the device."""
    from bench.data import SegmentationSplit, dataset_spec, locate

    spec = dataset_spec(cfg)
    dataset = SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), cfg.data.eval_split)
    label_size = [tuple(dataset.read_label(name).shape) for name in feats.names]
    batches = []
    for r in _batches_of(feats, key=lambda i: label_size[i]):
        images = feats.take(r)
        batches.append((images.features.to(device), images.cls_attention.to(device), label_size[r.start]))
    sizes = sorted({f"{h}x{w}" for h, w in label_size})
    log.info("perf: ACSeg inference (model forward to label resolution %s) on %d images", ", ".join(sizes), len(feats))

    def run():
        with torch.no_grad():
            for features, attention, size in batches:
                model(features, size, attention)

    return Measure("acseg_inference_images_per_s", rate(run, len(feats), device, min_seconds), "images/s",
                   f"acseg.model.ACSeg.forward in batches of {EVAL_BATCH} on cached features already on the device: "
                   f"concept step + concept classification + upsampling to the label resolution ({', '.join(sizes)}) "
                   f"+ per-pixel argmax and classes; {model_source}")


# ------------------------------------------------------------------------------------------ concept step


def concept_step(model, features: torch.Tensor) -> torch.Tensor:
    """ACSeg's concept step at inference: concepts of each image, cosine assignment, argmax -> [B, n]."""
    from acseg.assignment import hard_assignment

    _, similarity = model.assign(features)
    return hard_assignment(similarity)


def _prepared_batches(model, feats: CachedFeatures, device: torch.device) -> list[torch.Tensor]:
    return [feats.take(r).features.to(device) for r in _batches_of(feats)]


def measure_concept_step(model, feats: CachedFeatures, device: torch.device, min_seconds: float,
                         model_source: str) -> Measure:
    log.info("perf: concept step on %d images in batches of %d", len(feats.names), EVAL_BATCH)
    batches = _prepared_batches(model, feats, device)

    def run():
        with torch.no_grad():
            for b in batches:
                concept_step(model, b)

    return Measure("concept_step_images_per_s", rate(run, len(feats.names), device, min_seconds), "images/s",
                   f"in batches of {EVAL_BATCH} (how it runs): feature centring + concept generator forward + cosine "
                   f"assignment + argmax; {model_source}")


def _prepared(model, feats: CachedFeatures, i: int, device: torch.device) -> torch.Tensor:
    """One image's patch features [n, d], centred as the concept step sees them."""
    return model.prepare(feats.take([i]).features.to(device))[0]


# The FLOP counts: matrix products exactly (a multiply-add is 2 FLOPs; tests/bench/test_perf.py checks them against
# torch's FLOP counter), element-wise work to first order (LayerNorm 5 per element, softmax 4 per logit, L2
# normalisation 3 per element, argmax/min/subtraction 1 per element).

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


def kmeans_flop_terms(n: int, d: int, k: int, iterations: int) -> tuple[float, float]:
    """(matrix-product, element-wise) FLOPs of this harness's cosine k-means on one image (acseg/kmeans.py's
    algorithm): L2 normalisation, the k-means++ draws (one cosine column and a running minimum per drawn centre),
    ``iterations`` Lloyd iterations (scores, argmax, centroid sums and counts, normalisation, shift) and the final
    assignment: matrix products (k-1)2nd + I 2nkd + 2nkd, element-wise 3nd + (k-1)3n + I(nk + nd + n + 6kd) + nk."""
    matmul = (k - 1) * 2 * n * d + iterations * 2 * n * k * d + 2 * n * k * d
    elementwise = 3 * n * d + (k - 1) * 3 * n + iterations * (n * k + n * d + n + 6 * k * d) + n * k
    return float(matmul), float(elementwise)


def kmeans_flops(n: int, d: int, k: int, iterations: int) -> float:
    return sum(kmeans_flop_terms(n, d, k, iterations))


def sklearn_kmeans_flops(n: int, d: int, k: int, iterations: int, local_trials: int) -> float:
    """FLOPs of scikit-learn's KMeans (lloyd, one k-means++ run) on one image: L2 normalisation, centring and
    squared norms, greedy k-means++ (a distance column for the first centre, then ``local_trials`` candidate
    columns per centre), ``iterations`` Lloyd iterations (distances by GEMM, argmin, centroid sums) and the
    final E-step: 6nd + (1 + (k-1)t)(2nd + 3n) + I(2nkd + 2nk + nd) + 2nkd + 2nk."""
    return float(6 * n * d + (1 + (k - 1) * local_trials) * (2 * n * d + 3 * n)
                 + iterations * (2 * n * k * d + 2 * n * k + n * d) + 2 * n * k * d + 2 * n * k)


def batched_kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = KMEANS_ITERS, tol: float = KMEANS_TOL,
                   init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """acseg.kmeans.kmeans(cosine=True, n_init=1) of every image of a batch at once: x [B, n, d] ->
    (labels [B, n], centroids [B, k, d], Lloyd iterations run).

    The same algorithm per image: points on the unit sphere, k-means++ draws (``init`` [B, k, d] instead, if
    given), Lloyd iterations until the centroids move less than ``tol`` (squared) or ``iters``, empty clusters
    re-seeded on random points. An image that has converged keeps its centroids while the others go on (the
    batch computes until the last one converges, which is the count returned)."""
    b, n, d = x.shape
    x = F.normalize(x.float(), dim=-1)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    rows = torch.arange(b, device=x.device)
    if init is None:
        first = torch.randint(n, (b,), generator=generator, device=x.device)
        drawn = [x[rows, first]]  # [B, d] each
        closest = None
        for _ in range(1, k):
            dist = (1 - (x @ drawn[-1][:, :, None]).squeeze(-1)).clamp_min(0)  # [B, n]
            closest = dist if closest is None else torch.minimum(closest, dist)
            # fewer distinct points than k: uniform draws (as acseg.kmeans)
            weights = torch.where(closest.sum(-1, keepdim=True) > 0, closest, torch.ones_like(closest))
            drawn.append(x[rows, torch.multinomial(weights, 1, generator=generator).squeeze(1)])
        centroids = torch.stack(drawn, 1)
    else:
        centroids = init.float().to(x.device)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    ones = torch.ones(b, n, device=x.device)
    run = 0
    for _ in range(iters):
        run += 1
        labels = (x @ centroids.transpose(1, 2)).argmax(-1)  # [B, n]
        sums = torch.zeros_like(centroids).scatter_add_(1, labels[..., None].expand(-1, -1, d), x)
        mass = torch.zeros(b, k, device=x.device).scatter_add_(1, labels, ones)
        new = sums / mass.clamp_min(1e-12)[..., None]
        empty = mass == 0
        if bool(empty.any()):
            idx = torch.randint(n, (b, k), generator=generator, device=x.device)
            new = torch.where(empty[..., None], x[rows[:, None], idx], new)
        new = F.normalize(new, dim=-1)
        shift = (new - centroids).pow(2).sum((1, 2))
        centroids = torch.where(active[:, None, None], new, centroids)
        active = active & (shift >= tol)
        if not bool(active.any()):
            break
    labels = (x @ centroids.transpose(1, 2)).argmax(-1)
    return labels, centroids, run


def measure_batched_kmeans(model, feats: CachedFeatures, k: int, device: torch.device,
                           min_seconds: float) -> list[Measure]:
    """This harness's k-means into k segments per image, run on the concept step's batches at once."""
    log.info("perf: batched k-means (k=%d) on %d images in batches of %d", k, len(feats), EVAL_BATCH)
    batches = _prepared_batches(model, feats, device)
    flops, iterations = [], []
    for features in batches:
        _, _, run = batched_kmeans(model.prepare(features), k)
        b, h, w, d = features.shape
        flops += [kmeans_flops(h * w, d, k, run)] * b
        iterations += [run] * b

    def run_all():
        for features in batches:
            batched_kmeans(model.prepare(features), k)

    n = len(feats)
    speed = Measure("batched_kmeans_images_per_s", rate(run_all, n, device, min_seconds), "images/s",
                    f"bench.perf.batched_kmeans: acseg/kmeans.py's algorithm (cosine, one k-means++ draw, <= "
                    f"{KMEANS_ITERS} Lloyd iterations, tol {KMEANS_TOL:g}) on the concept step's batches of "
                    f"{EVAL_BATCH} images at once, k={k} (acseg.prototypes), the same centred features")
    gflop = Measure("batched_kmeans_gflop_per_image", sum(flops) / n / 1e9, "GFLOP",
                    f"kmeans_flops with the Lloyd iterations the batches ran (mean "
                    f"{sum(iterations) / n:.1f}, max {max(iterations)} per image): (k-1)2nd + (I+1)2nkd "
                    f"(matrix products) + 3nd + (k-1)3n + I(nk + nd + n + 6kd) + nk")
    return [speed, gflop]


def sklearn_kmeans(x: torch.Tensor, k: int, seed: int = 0):
    """scikit-learn's KMeans (all its defaults but the seed) fitted on one image's patches [n, d], L2-normalised
    (as the cosine k-means); the fitted estimator (``labels_``, ``n_iter_``)."""
    from sklearn.cluster import KMeans

    return KMeans(k, random_state=seed).fit(F.normalize(x.float(), dim=-1).cpu().numpy())


def measure_sklearn_kmeans_per_image(model, feats: CachedFeatures, k: int, device: torch.device,
                                     min_seconds: float, progress: bool = True) -> list[Measure]:
    """Per-image k-means as people run it: scikit-learn's KMeans at its current defaults, one image at a time."""
    import numpy as np
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


# --------------------------------------------------------------------------------------------- training


def measure_training(cfg: Config, train: CachedFeatures, device: torch.device, steps: int,
                     warmup: int) -> list[Measure]:
    """ACSeg's and STEGO's real training loops with steps = warm-up + timed steps, each step timed by an
    optimizer step hook (the one-off set-up, e.g. the feature mean, and the warm-up steps are left out)."""
    from acseg.stego import knn_table
    from bench.methods import get_method
    from bench.methods.acseg import train_generator
    from bench.methods.stego import pooled_features, train_stego

    rows = []
    t = cfg.acseg.train
    on = f"; {len(train)} {cfg.data.train_split} images"
    log.info("perf: ACSeg training, %d warm-up + %d timed steps (batch %d)", warmup, steps, t.batch_size)
    with step_clock(device) as stamps:
        train_generator(with_overrides(cfg, {"acseg.train.steps": warmup + steps}), 0, train,
                        get_method("acseg").n_clusters(cfg), device, progress=False)
    rows.append(Measure("acseg_train_steps_per_s", steps_per_second(stamps, warmup, steps), "steps/s",
                        f"bench.methods.acseg.train_generator, batch {t.batch_size}, {t.pixel_samples} "
                        f"sampled pixels; {steps} steps timed after {warmup} warm-up steps{on}"))
    knn = knn_table(pooled_features(train), cfg.stego.knn)
    log.info("perf: STEGO training, %d warm-up + %d timed steps (batch %d)", warmup, steps, cfg.stego.batch_size)
    with step_clock(device) as stamps:
        train_stego(with_overrides(cfg, {"stego.steps": warmup + steps}), 0, train, knn,
                    get_method("stego").n_clusters(cfg), device, progress=False)
    rows.append(Measure("stego_train_steps_per_s", steps_per_second(stamps, warmup, steps), "steps/s",
                        f"bench.methods.stego.train_stego, batch {cfg.stego.batch_size}, "
                        f"{cfg.stego.feature_samples}^2 points; {steps} steps timed after {warmup} warm-up "
                        f"steps{on}"))
    return rows


# ------------------------------------------------------------------------------------------- evaluation


def _eval_inputs(cfg: Config, split: str):
    from bench.data import SegmentationSplit, dataset_spec, locate

    spec = dataset_spec(cfg)
    return spec, SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), split)


def measure_evaluation(cfg: Config, feats: CachedFeatures, device: torch.device, min_seconds: float,
                       model_source: str, predict) -> list[Measure]:
    from bench.evaluate import evaluate
    from bench.methods import get_method

    spec, dataset = _eval_inputs(cfg, cfg.data.eval_split)
    n, k = len(feats.names), get_method("acseg").n_clusters(cfg)
    log.info("perf: evaluation of ACSeg on %d %s images, without and with the CRF", n, cfg.data.eval_split)
    plain = rate(lambda: evaluate(predict, feats, spec, dataset.read_label, k, device, progress=False),
                 n, device, min_seconds)
    with_crf = n / seconds(lambda: evaluate(predict, feats, spec, dataset.read_label, k, device, progress=False,
                                            crf=cfg.crf.params(), read_image=dataset.read_image,
                                            crf_alpha=cfg.crf.alpha, crf_workers=cfg.crf.workers),
                           device)
    where = f"bench.evaluate.evaluate, ACSeg ({model_source}), first {n} {cfg.data.eval_split} images, batch 8"
    return [Measure("eval_images_per_s", plain, "images/s", f"{where}; label decoding included"),
            Measure("eval_crf_images_per_s", with_crf, "images/s",
                    f"{where}; dense CRF ({cfg.crf.iterations} iterations) on each image at the label resolution, in "
                    f"{cfg.crf.workers or os.cpu_count()} process(es) (crf.workers={cfg.crf.workers})")]


def measure_crf_stage(cfg: Config, feats: CachedFeatures, device: torch.device, images: int = 8) -> list[Measure]:
    """The CRF stage before and after its one pass: the trained runs of benchmark.crf_methods x seeds (those
    present) refined on the same first images, one evaluation per run (each image's CRF kernels built again for
    every run, as the stage did) against one pass over all of them (the kernels built once per image and label
    count). The confusion matrices are the same either way (tests/bench/test_evaluate.py); none if fewer than two
    runs are trained."""
    from bench.evaluate import evaluate_all
    from bench.methods import get_method
    from bench.runs import load_fitted, run_dir

    runs = [(m, s) for m in cfg.benchmark.crf_methods for s in cfg.benchmark.seeds
            if (run_dir(cfg, m, s) / "model.pt").is_file()]
    if len(runs) < 2:
        return []
    feats = first_images(feats, min(images, len(feats)))
    spec, dataset = _eval_inputs(cfg, cfg.data.eval_split)
    split = cfg.data.eval_split
    predictors = {run: get_method(run[0]).predictor(cfg, *load_fitted(cfg, *run, device), device, split)
                  for run in runs}
    k = {run: get_method(run[0]).n_clusters(cfg) for run in runs}
    kwargs = dict(progress=False, crf=cfg.crf.params(), read_image=dataset.read_image, crf_alpha=cfg.crf.alpha,
                  crf_workers=cfg.crf.workers)
    log.info("perf: the CRF stage on %d images x %d runs, one evaluation per run and one pass", len(feats), len(runs))
    each = seconds(lambda: [evaluate_all({r: p}, feats, spec, dataset.read_label, {r: k[r]}, device, **kwargs)
                            for r, p in predictors.items()], device)
    one = seconds(lambda: evaluate_all(predictors, feats, spec, dataset.read_label, k, device, **kwargs), device)
    where = (f"the {len(runs)} trained runs of benchmark.crf_methods x seeds on the first {len(feats)} {split} images, "
             f"crf.workers={cfg.crf.workers}")
    per_run = Measure("crf_stage_per_run_s_per_image", each / len(feats), "s",
                      f"{where}: one evaluation per run (the kernels built for every run), seconds per image")
    one_pass = Measure("crf_stage_one_pass_s_per_image", one / len(feats), "s",
                       f"{where}: one pass (the kernels built once per image and label count), seconds per image")
    return [per_run, one_pass, ratio("crf_stage_one_pass_speedup", per_run, one_pass)]


def _status_mb(*fields: str) -> dict[str, float]:
    """Fields of /proc/self/status (Linux; empty elsewhere) in MB: VmHWM (peak resident), RssAnon, RssFile."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in lines) if k in fields}


def _peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM (Linux). Not ru_maxrss: Linux carries the parent's peak
    over fork and exec into the child's ru_maxrss, so a spawned child would report at least its parent's peak."""
    peak = _status_mb("VmHWM")
    if peak:
        return peak["VmHWM"]
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux (bytes on macOS)


def eval_peak_rss(cfg: Config, dataset_spec, entry: str, split: str, threads: int) -> dict:
    """In a fresh process: a whole streaming evaluation of the feature cache entry ``entry`` (read as
    load_features reads one), labels of ``split`` of ``dataset_spec``; its peak resident memory at each stage,
    in MB."""
    from bench.datasets import DATASETS
    from bench.evaluate import evaluate
    from bench.methods import get_method

    DATASETS.setdefault(dataset_spec.name, dataset_spec)  # registered at run time (tests): absent in a new process
    torch.set_num_threads(threads)
    device = resolve_device(cfg.run.device)
    spec, dataset = _eval_inputs(cfg, split)
    after_imports = _peak_rss_mb()
    feats = read_features(Path(entry), stream=True)  # as the evaluation reads a split (bench.runs.run_evaluate)
    after_load = _peak_rss_mb()
    predict, _ = acseg_predictor(cfg, device, feats)
    ev = evaluate(predict, feats, spec, dataset.read_label, get_method("acseg").n_clusters(cfg), device,
                  progress=False)
    end = _status_mb("RssAnon", "RssFile")
    return {"n_images": ev.n_images, "peak_rss_mb": _peak_rss_mb(), "after_imports_mb": after_imports,
            "after_features_mb": after_load, "end_anon_mb": end.get("RssAnon", float("nan")),
            "end_file_mb": end.get("RssFile", float("nan")),
            "features_mb": 2 * (math.prod(feats.rows.shape) + math.prod(feats.attention_rows.shape)) / 2**20}


def measure_eval_memory(cfg: Config, train: CachedFeatures, n: int) -> list[Measure]:
    """Peak RSS of a whole evaluation over N and 2N images of the training split (its first images written as
    their own cache entries), each in a fresh spawned process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench import cache
    from bench.data import dataset_spec

    split, spec = cfg.data.train_split, dataset_spec(cfg)
    results = {}
    with tempfile.TemporaryDirectory(prefix="acseg-perf-memory-") as tmp:
        for label, count in (("1x", n), ("2x", 2 * n)):
            part = first_images(train, count)
            entry = Path(tmp) / f"first{count}"
            cache.write_entry(entry, {"features": part.rows, "cls_attention": part.attention_rows,
                                      "grids": part.grids}, {**part.meta, "names": part.names})
            log.info("perf: peak memory of an evaluation of %d %s images, fresh process", count, split)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[label] = pool.submit(eval_peak_rss, cfg, spec, str(entry), split,
                                               torch.get_num_threads()).result()
    rows = []
    for label, count in (("1x", n), ("2x", 2 * n)):
        r = results[label]
        rows.append(Measure(f"eval_peak_rss_mb_{label}", r["peak_rss_mb"], "MB",
                            f"{count} {split} images: peak after imports {r['after_imports_mb']:.0f} MB, after "
                            f"reading the cache entry ({r['features_mb']:.0f} MB of features) "
                            f"{r['after_features_mb']:.0f} MB, end of evaluation {r['peak_rss_mb']:.0f} MB; resident "
                            f"at the end: {r['end_anon_mb']:.0f} MB anonymous, {r['end_file_mb']:.0f} MB file-backed "
                            f"(libraries and the memory-mapped feature entry)"))
    rows.append(ratio("eval_peak_rss_ratio_2x_split", rows[1], rows[0],
                      f"peak RSS with 2N / with N images (target <= {RSS_RATIO_TARGET})"))
    return rows


# ---------------------------------------------------------------------------------------------- dvc repro


def repro_rows(path: Path) -> list[Measure]:
    """dvc repro wall times from ``path`` (written by pipelines/time_repro.sh), with the processor it records;
    none if it is absent."""
    if not Path(path).is_file():
        return []
    t = json.loads(Path(path).read_text())
    cpu = t.get("cpu") or "processor not recorded"
    where = (f"{path}: `{t.get('command', '?')}` at commit {t.get('commit', '?')} on {t.get('date', '?')}, "
             f"on {cpu}")
    return [Measure("dvc_repro_cold_s", float(t["cold_s"]), "s", f"feature and k-NN caches deleted; {where}"),
            Measure("dvc_repro_warm_s", float(t["warm_s"]), "s", f"nothing changed; {where}")]


def repro_processor(path: Path) -> str | None:
    """The processor a repro timing file records (None: absent file or not recorded)."""
    if not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text()).get("cpu")


# -------------------------------------------------------------------------------------------------- suite


def run_suite(cfg: Config, images: int = 24, memory_images: int = 150, steps: int = 20, warmup_steps: int = 3,
              repeats: int = 2, min_seconds: float = 2.0, progress: bool = True,
              repro_timing: Path | None = Path("reports/repro_timing.json"), profile: bool = True) -> list[Measure]:
    """Every measure on the config's images and cached features (evaluation and training split; the first images
    of a split without a cache are extracted for the run, see :func:`suite_features`)."""
    device = resolve_device(cfg.run.device)
    rows = measure_feature_extraction(cfg, device, images, repeats, progress, profile)
    bare = next(r for r in rows if r.measure == "features_bare_timm_images_per_s")
    with suite_features(cfg, progress) as get:
        evaluated, eval_source = get(cfg.data.eval_split, images)
        evaluated = first_images(evaluated, images)
        model, _, source = concept_model(cfg, device, evaluated)
        inference = measure_acseg_inference(cfg, model, evaluated, device, min_seconds, source)
        rows += [inference, ratio("acseg_inference_overhead", bare, inference,
                                  f"ACSeg inference time per image / bare backbone forward time per image "
                                  f"(features_bare_timm_images_per_s), the same {images} images "
                                  f"(target <= {INFERENCE_OVERHEAD_TARGET})")]
        k = cfg.acseg.prototypes
        step = measure_concept_step(model, evaluated, device, min_seconds, source)
        sk = measure_sklearn_kmeans_per_image(model, evaluated, k, device, min_seconds, progress)
        ours = measure_batched_kmeans(model, evaluated, k, device, min_seconds)
        rows += [step, sk[0], ours[0],
                 ratio("concept_step_speedup_vs_sklearn_kmeans", step, sk[0],
                       "concept_step_images_per_s / sklearn_kmeans_per_image_images_per_s (the paper's comparison)"),
                 ratio("concept_step_speedup_vs_batched_kmeans", step, ours[0],
                       "concept_step_images_per_s / batched_kmeans_images_per_s (the same batches, on the same "
                       "device)"),
                 concept_step_gflop(model, evaluated), sk[1], ours[1]]
        train, train_source = get(cfg.data.train_split, max(2 * memory_images, cfg.stego.knn + 1))
        rows += measure_training(cfg, train, device, steps, warmup_steps)
        from bench.methods.acseg import ACSegPredictor

        rows += measure_evaluation(cfg, evaluated, device, min_seconds, source, ACSegPredictor(model))
        rows += measure_crf_stage(cfg, evaluated, device)
        rows += measure_eval_memory(cfg, train, memory_images)
        from bench.generators import generator_perf_rows

        rows += generator_perf_rows(cfg, evaluated, train, min_seconds)  # the speed of every concept generator
    for r in rows:  # where the features came from
        if r.measure in ("acseg_inference_images_per_s", "concept_step_images_per_s", "eval_images_per_s"):
            r.note += f"; features: {eval_source}"
        elif r.measure in ("acseg_train_steps_per_s", "eval_peak_rss_mb_1x"):
            r.note += f"; features: {train_source}"
    rows += repro_rows(repro_timing) if repro_timing else []
    return rows


# ------------------------------------------------------------------------------------------------- report


def machine(device: torch.device) -> dict[str, str]:
    from bench.tracking import cpu_name

    info = {"cpu": cpu_name(), "cores": str(os.cpu_count()), "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["device"] += f" ({props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return info


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def write_report(rows: list[Measure], out: str | Path, command: str, machine_info: dict[str, str],
                 repro_cpu: str | None = None) -> tuple[Path, Path]:
    """performance.csv (measure,value,unit) and performance.md in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "performance.csv", out / "performance.md"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "value", "unit"])
        writer.writerows([r.measure, f"{r.value:.6g}", r.unit] for r in rows)

    v = {r.measure: r.value for r in rows}
    processor = machine_info.get("cpu", "?")
    device = machine_info.get("device", "cpu")
    on = device if not device.startswith("cpu") else f"this CPU ({processor})"
    lines = ["# Performance", "", f"Regenerate with `{command}` (writes `{csv_path}` and this file).", "",
             f"Measured on **{on}**. Machine: " + ", ".join(f"{k} {val}" for k, val in machine_info.items()) + ".",
             "", "| measure | value | unit | how |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.measure} | {_fmt(r.value)} | {r.unit} | {r.note} |" for r in rows
              if not r.measure.startswith(PROFILE_PREFIX)]
    lines += ["", f"## Targets (issue 17), on {on}", ""]
    for name, target in TARGETS.items():
        if name in v:
            lines.append(f"- `{name}` {_fmt(v[name])} (target <= {target}): "
                         f"{'**met**' if v[name] <= target else '**NOT met**'}")
    lines += _speed_claim(v)
    lines += _feature_profile(rows, v, gpu=not device.startswith("cpu"))
    if "dvc_repro_cold_s" in v:
        lines += ["", "## `dvc repro`", "",
                  f"- cold {_fmt(v['dvc_repro_cold_s'])} s, warm {_fmt(v['dvc_repro_warm_s'])} s, copied from the "
                  f"timing file (see the rows' notes), measured on "
                  f"{repro_cpu or 'a processor the timing file does not record (an older time_repro.sh)'}"
                  + ("" if not repro_cpu or repro_cpu == processor or not device.startswith("cpu") else
                     f", not this run's processor ({processor}): compare the two with care") + "."]
    lines += ["", "## Notes", "",
              "- All rows come from one run, side by side, so their ratios hold even when the machine is noisy; "
              "absolute rates depend on the machine and on the thread count above.",
              f"- Threads: {machine_info.get('torch threads', '?')} (torch's default, which follows "
              "OMP_NUM_THREADS, unless `--threads` is given; scikit-learn's BLAS and OpenMP are limited to the same "
              "number).",
              "- The concept step and this harness's k-means are timed on the same batches of 8 images (that is how "
              "ACSeg runs, and the k-means is batched the same way); scikit-learn's KMeans one image at a time "
              "(that is how it is run), all on the same centred patch features, feature centring included.",
              "- `acseg_inference_overhead` divides ACSeg's whole inference after the backbone (the model's forward "
              "to per-pixel classes at the label resolution) by the bare backbone forward of the feature measure, "
              "on the same images; the backbone's float16 autocast applies on a GPU, as in the pipeline.",
              "- Training rates time only the steps after the warm-up steps (an optimizer step hook), not the "
              "set-up; the config's steps are overridden, which changes the learning-rate schedule, not the cost.",
              "- Peak memory: each evaluation runs in a fresh spawned process reading a cache entry that holds "
              "exactly its N (or 2N) images, as `load_features` reads a split's entry; peak RSS is the child's "
              "VmHWM (its `ru_maxrss` would include the parent's peak, which Linux carries over fork and exec)."]
    if "dvc_repro_cold_s" not in v:
        lines += ["- `dvc_repro_cold_s` and `dvc_repro_warm_s` are not measured by this command (25-55 "
                  "minutes): run `bash pipelines/time_repro.sh`, which writes `reports/repro_timing.json`, then "
                  "this command again to copy them here."]
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _speed_claim(v: dict[str, float]) -> list[str]:
    """The paper's speed comparison: both speed-ups, the FLOPs per image and the rate each one reaches."""
    if "concept_step_images_per_s" not in v:
        return []
    lines = ["", "## The concept step against per-image k-means (the paper: 149 vs 2.4 images/s)", "",
             "| | images/s | GFLOP per image | GFLOP/s reached | concept step's speed-up |",
             "| --- | --- | --- | --- | --- |"]
    for what, speed, flops, speedup in (
            ("ACSeg's concept step (batches of 8)", "concept_step_images_per_s", "concept_step_gflop_per_image", None),
            ("scikit-learn KMeans per image, current defaults (the paper's comparison)",
             "sklearn_kmeans_per_image_images_per_s", "sklearn_kmeans_gflop_per_image",
             "concept_step_speedup_vs_sklearn_kmeans"),
            ("this harness's k-means, batched like the concept step", "batched_kmeans_images_per_s",
             "batched_kmeans_gflop_per_image", "concept_step_speedup_vs_batched_kmeans")):
        if speed in v and flops in v:
            lines.append(f"| {what} | {_fmt(v[speed])} | {v[flops]:.4g} | {_fmt(v[speed] * v[flops])} | "
                         f"{_fmt(v[speedup]) + 'x' if speedup and speedup in v else ''} |")
    lines.append("")
    for speedup, speed, flops, what in (
            ("concept_step_speedup_vs_sklearn_kmeans", "sklearn_kmeans_per_image_images_per_s",
             "sklearn_kmeans_gflop_per_image", "scikit-learn's KMeans"),
            ("concept_step_speedup_vs_batched_kmeans", "batched_kmeans_images_per_s", "batched_kmeans_gflop_per_image",
             "this harness's batched k-means")):
        if {speedup, speed, flops, "concept_step_gflop_per_image"} <= set(v):
            work = v[flops] / v["concept_step_gflop_per_image"]
            use = v[speedup] / work
            lines.append(f"- vs {what}: {_fmt(v[speedup])}x = {work:.3g} (its FLOPs per image / the concept "
                         f"step's) x {use:.3g} (the concept step's GFLOP/s / its GFLOP/s)")
    return lines


def _feature_profile(rows: list[Measure], v: dict[str, float], gpu: bool = False) -> list[str]:
    """Where the feature pipeline's time goes, from its profiled round, against the bare forward."""
    stages = [r for r in rows if r.measure.startswith(PROFILE_PREFIX) and not r.measure.endswith("total_ms_per_image")]
    total = v.get(f"{PROFILE_PREFIX}total_ms_per_image")
    if not stages or not total or "features_bare_timm_images_per_s" not in v:
        return []
    bare_ms = 1000 / v["features_bare_timm_images_per_s"]
    lines = ["", "## Where the feature pipeline's time goes (cProfile of one more pipeline round)", "",
             f"The bare timm loop takes {bare_ms:.1f} ms per image; the profiled pipeline round "
             f"{total:.1f} ms per image (cProfile's own overhead included).", "",
             "| stage | ms per image | share of the round | what |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.measure[len(PROFILE_PREFIX):-len('_ms_per_image')]} | {r.value:.1f} | "
              f"{100 * r.value / total:.1f} % | {r.note} |" for r in stages]
    vit = v.get(f"{PROFILE_PREFIX}vit_forward_features_ms_per_image")
    load = v.get(f"{PROFILE_PREFIX}backbone_load_and_checksum_ms_per_image", 0.0)
    if vit:
        per_image = total - vit - load
        lines += ["", f"- Beyond the backbone's forward the round spends {total - vit:.1f} ms per image: "
                  f"{load:.1f} ms is the one-off backbone load spread over this run's images, {per_image:.1f} ms "
                  f"is per-image work (decoding, resizing, [CLS] attention, float16, the write).",
                  f"- Profiled ratio {total / vit:.3f}; without the one-off load (a whole split, where it is "
                  f"under 1 %) {(total - load) / vit:.3f}. The per-image work left is what a faster pipeline "
                  f"could remove: decoding and resizing run on the same cores as the forward, between batches."]
    if gpu:
        lines.append("- On a GPU the kernels run asynchronously: the profile puts the forward's time where the CPU "
                     "waits for it (the float16 copies to the CPU, in `other`), not in `vit_forward_features`.")
    return lines
