"""The performance suite (`acseg-bench perf`): the speed and memory numbers of issue 6, measured side by side in
one run on the config's real cached features and images, so that their ratios hold on a noisy machine.

One function per measure, each returning :class:`Measure` rows; :func:`run_suite` runs them all and
:func:`write_report` writes ``performance.csv`` (``measure,value,unit``) and ``performance.md``.

- feature extraction: the real pipeline (:func:`bench.features.ensure_features`: decoding, resizing, the
  extractor with its hook and [CLS] attention, float16, the atomic cache write) on the evaluation split's first
  N images, into a temporary cache, against a bare loop of the same timm model's ``forward_features`` on the same
  images already resized and normalised, same size, batch size and weights;
- the concept step (concept generator + cosine assignment + argmax) in batches, as it runs, against per-image
  k-means (``acseg.kmeans``, and scikit-learn's KMeans with one run and with 10 restarts) and per-image
  spectral clustering (scikit-learn) into as many segments;
- training steps per second of ACSeg and STEGO (their real loops, after warm-up steps);
- evaluation images per second with and without the dense CRF (:func:`bench.evaluate.evaluate`), and the peak
  resident memory of a whole streaming evaluation of N and 2N images, each in a fresh process;
- ``dvc repro`` wall times, copied from ``reports/repro_timing.json`` (``pipelines/time_repro.sh``) if present.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from bench.config import Config, with_overrides
from bench.data import atomic_path, write_text_atomic
from bench.features import CachedFeatures, load_features, read_features, resolve_device

log = logging.getLogger(__name__)

EVAL_BATCH = 8  # bench.evaluate.evaluate's batch size: the concept step runs on batches of this size
KMEANS_ITERS = 50  # per-image k-means as in bench/diagnose.py: cosine, 50 Lloyd iterations, one k-means++ draw
FEATURE_OVERHEAD_TARGET = 1.15
RSS_RATIO_TARGET = 1.10
CONCEPT_SPEEDUP_TARGET = 20  # issue 6 (the paper: 149.2 vs 2.4 images/s, 62x)
REQUIRED = (
    "features_pipeline_images_per_s", "features_bare_timm_images_per_s", "feature_overhead_ratio",
    "concept_step_images_per_s", "kmeans_per_image_images_per_s", "spectral_per_image_images_per_s",
    "concept_step_speedup_vs_kmeans", "concept_step_speedup_vs_spectral",
    "kmeans_sklearn_ninit_auto_per_image_images_per_s", "kmeans_sklearn_ninit_10_per_image_images_per_s",
    "concept_step_speedup_vs_sklearn_kmeans", "concept_step_speedup_vs_sklearn_kmeans_ninit10",
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


def concept_model(cfg: Config, device: torch.device, feats: CachedFeatures):
    """(ACSeg model, trained?, where it came from): the trained model of seed 0, or an untrained one of the
    configured size when that is missing or does not load (the concept step's cost does not depend on the
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


# -------------------------------------------------------------------------------------- feature extraction


class _FirstImages:
    """A dataset's first ``n`` images of every split, under its own name (so its cache entry is its own)."""

    def __init__(self, spec, n: int):
        self._spec, self._n = spec, n
        self.name = f"{spec.name}-perf-first{n}"

    def __getattr__(self, attr):
        return getattr(self._spec, attr)

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


def measure_feature_extraction(cfg: Config, device: torch.device, n: int, repeats: int = 2,
                               progress: bool = True) -> list[Measure]:
    """The feature pipeline (ensure_features into a temporary cache) against a bare timm loop; best of
    ``repeats`` alternating runs each."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from bench.backbones import load_backbone
    from bench.data import SegmentationSplit, dataset_spec, locate
    from bench.features import ensure_features

    spec = dataset_spec(cfg)
    split = cfg.data.eval_split
    subset = _FirstImages(spec, n)
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    size = (cfg.features.height, cfg.features.width)
    dataset = SegmentationSplit(subset, root, split, size=size, with_labels=False)
    if len(dataset) < n:
        raise ValueError(f"--images {n}: split {split!r} has only {len(dataset)} images")
    log.info("perf: feature extraction, pipeline vs bare timm, %d %s images at %dx%d, batch %d, best of %d",
             n, split, *size, cfg.features.batch_size, repeats)
    load_s = time.perf_counter()
    vit, _ = load_backbone(cfg.backbone)
    load_s = time.perf_counter() - load_s
    vit = vit.eval().to(device)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    images = (torch.stack([dataset[i][0] for i in range(n)]) - mean) / std  # decoded, resized, normalised
    batches = [b.to(device) for b in images.split(cfg.features.batch_size)]
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
    pipe = Measure("features_pipeline_images_per_s", n / min(pipeline_s), "images/s",
                   f"bench.features.ensure_features on the first {n} {split} images into a temporary cache "
                   f"(decoding, resizing, backbone load and checksum, extraction, float16, the atomic write of the "
                   f"entries it makes), best of {repeats}")
    bare_rate = Measure("features_bare_timm_images_per_s", n / min(bare_s), "images/s",
                        f"timm forward_features on the same {n} images already resized and normalised, batch "
                        f"{cfg.features.batch_size}, same weights, best of {repeats}")
    return [pipe, bare_rate,
            ratio("feature_overhead_ratio", bare_rate, pipe,
                  f"pipeline time per image / bare time per image (target <= {FEATURE_OVERHEAD_TARGET})"),
            Measure("features_backbone_load_s", load_s, "s",
                    "bench.backbones.load_backbone once (sha256 of the weights file, timm model, state dict): "
                    "a fixed cost inside each pipeline run, not per image")]


# ------------------------------------------------------------------------------------------ concept step


def concept_step(model, features: torch.Tensor) -> torch.Tensor:
    """ACSeg's concept step at inference: concepts of each image, cosine assignment, argmax -> [B, n]."""
    from acseg.assignment import hard_assignment

    _, similarity = model.assign(features)
    return hard_assignment(similarity)


def measure_concept_step(model, feats: CachedFeatures, device: torch.device, min_seconds: float,
                         model_source: str) -> Measure:
    log.info("perf: concept step on %d images in batches of %d", len(feats.names), EVAL_BATCH)
    batches = [feats.take(range(s, min(s + EVAL_BATCH, len(feats)))).features for s in range(0, len(feats), EVAL_BATCH)]

    def run():
        with torch.no_grad():
            for b in batches:
                concept_step(model, b.to(device))

    return Measure("concept_step_images_per_s", rate(run, len(feats.names), device, min_seconds), "images/s",
                   f"in batches of {EVAL_BATCH} (how it runs): concept generator forward + cosine assignment + "
                   f"argmax; {model_source}")


def _prepared(model, feats: CachedFeatures, i: int, device: torch.device) -> torch.Tensor:
    """One image's patch features [n, d], centred as the concept step sees them."""
    return model.prepare(feats.take([i]).features.to(device))[0]


def measure_kmeans_per_image(model, feats: CachedFeatures, k: int, device: torch.device, min_seconds: float,
                             progress: bool = True) -> Measure:
    from acseg.kmeans import kmeans

    n = len(feats.names)
    log.info("perf: per-image k-means (k=%d) on %d images", k, n)

    def run():
        for i in tqdm(range(n), desc="perf k-means", disable=not progress, unit="image", leave=False):
            kmeans(_prepared(model, feats, i, device), k, seed=0, cosine=True, iters=KMEANS_ITERS)

    return Measure("kmeans_per_image_images_per_s", rate(run, n, device, min_seconds), "images/s",
                   f"one image at a time (what it is): acseg/kmeans.py, k={k} (acseg.prototypes), cosine, "
                   f"{KMEANS_ITERS} iterations, one k-means++ draw (as in bench/diagnose.py), same centred features")


def sklearn_kmeans_segments(x: torch.Tensor, k: int, n_init: int | str, seed: int = 0):
    """scikit-learn's KMeans of one image's patches [n, d] (L2-normalised, as the cosine k-means) into k segments."""
    import torch.nn.functional as F
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=n_init, random_state=seed).fit_predict(F.normalize(x.float(), dim=-1).cpu().numpy())


def measure_sklearn_kmeans_per_image(model, feats: CachedFeatures, k: int, n_init: int | str, device: torch.device,
                                     min_seconds: float, progress: bool = True) -> Measure:
    """Per-image k-means as most code runs it: scikit-learn's KMeans, its defaults but ``n_init``."""
    from threadpoolctl import threadpool_limits

    n = len(feats.names)
    name = "auto" if n_init == "auto" else f"{n_init}"
    log.info("perf: per-image scikit-learn k-means (k=%d, n_init=%s) on %d images", k, name, n)

    def run():
        with threadpool_limits(torch.get_num_threads()):
            for i in tqdm(range(n), desc=f"perf sklearn k-means n_init={name}", disable=not progress, unit="image",
                          leave=False):
                sklearn_kmeans_segments(_prepared(model, feats, i, device), k, n_init)

    why = ("scikit-learn's current default: one k-means++ run" if n_init == "auto" else
           f"{n_init} k-means++ restarts, scikit-learn's default before 1.4 (the paper's time)")
    return Measure(f"kmeans_sklearn_ninit_{name}_per_image_images_per_s", rate(run, n, device, min_seconds),
                   "images/s", f"one image at a time: sklearn.cluster.KMeans, k={k}, n_init={name} ({why}), "
                   "max_iter 300, tol 1e-4, L2-normalised centred features")


def spectral_segments(x: torch.Tensor, k: int, seed: int = 0):
    """Spectral clustering of one image's patches [n, d] into k segments; affinity = cosine clipped at 0."""
    import torch.nn.functional as F
    from sklearn.cluster import SpectralClustering

    xn = F.normalize(x.float(), dim=-1)
    affinity = (xn @ xn.T).clamp_min(0).cpu().double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected" on some images
        return SpectralClustering(k, affinity="precomputed", random_state=seed).fit_predict(affinity)


def measure_spectral_per_image(model, feats: CachedFeatures, k: int, device: torch.device, min_seconds: float,
                               progress: bool = True) -> Measure:
    from threadpoolctl import threadpool_limits

    n = len(feats.names)
    log.info("perf: per-image spectral clustering (k=%d) on %d images", k, n)

    def run():
        with threadpool_limits(torch.get_num_threads()):  # scikit-learn's BLAS gets torch's thread count
            for i in tqdm(range(n), desc="perf spectral", disable=not progress, unit="image", leave=False):
                spectral_segments(_prepared(model, feats, i, device), k)

    return Measure("spectral_per_image_images_per_s", rate(run, n, device, min_seconds), "images/s",
                   f"one image at a time: sklearn SpectralClustering, k={k}, affinity = patch cosine clipped at 0 "
                   f"(precomputed), default solver (arpack) and k-means label assignment, same centred features")


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
    log.info("perf: ACSeg training, %d warm-up + %d timed steps (batch %d)", warmup, steps, t.batch_size)
    with step_clock(device) as stamps:
        train_generator(with_overrides(cfg, {"acseg.train.steps": warmup + steps}), 0, train,
                        get_method("acseg").n_clusters(cfg), device, progress=False)
    rows.append(Measure("acseg_train_steps_per_s", steps_per_second(stamps, warmup, steps), "steps/s",
                        f"bench.methods.acseg.train_generator, batch {t.batch_size}, {t.pixel_samples} "
                        f"sampled pixels; {steps} steps timed after {warmup} warm-up steps"))
    knn = knn_table(pooled_features(train), cfg.stego.knn)
    log.info("perf: STEGO training, %d warm-up + %d timed steps (batch %d)", warmup, steps, cfg.stego.batch_size)
    with step_clock(device) as stamps:
        train_stego(with_overrides(cfg, {"stego.steps": warmup + steps}), 0, train, knn,
                    get_method("stego").n_clusters(cfg), device, progress=False)
    rows.append(Measure("stego_train_steps_per_s", steps_per_second(stamps, warmup, steps), "steps/s",
                        f"bench.methods.stego.train_stego, batch {cfg.stego.batch_size}, "
                        f"{cfg.stego.feature_samples}^2 points; {steps} steps timed after {warmup} warm-up steps"))
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
                                            crf=cfg.crf.params(), read_image=dataset.read_image, crf_alpha=cfg.crf.alpha,
                                            crf_workers=cfg.crf.workers),
                           device)
    where = f"bench.evaluate.evaluate, ACSeg ({model_source}), first {n} {cfg.data.eval_split} images, batch 8"
    return [Measure("eval_images_per_s", plain, "images/s", f"{where}; label decoding included"),
            Measure("eval_crf_images_per_s", with_crf, "images/s",
                    f"{where}; dense CRF ({cfg.crf.iterations} iterations) on each image at the label resolution, in "
                    f"{cfg.crf.workers or os.cpu_count()} process(es) (crf.workers={cfg.crf.workers})")]


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
    """dvc repro wall times from ``path`` (written by pipelines/time_repro.sh); none if it is absent."""
    if not Path(path).is_file():
        return []
    t = json.loads(Path(path).read_text())
    where = f"{path}: `{t.get('command', '?')}` at commit {t.get('commit', '?')} on {t.get('date', '?')}"
    return [Measure("dvc_repro_cold_s", float(t["cold_s"]), "s", f"feature and k-NN caches deleted; {where}"),
            Measure("dvc_repro_warm_s", float(t["warm_s"]), "s", f"nothing changed; {where}")]


# -------------------------------------------------------------------------------------------------- suite


def run_suite(cfg: Config, images: int = 24, memory_images: int = 150, steps: int = 20, warmup_steps: int = 3,
              repeats: int = 2, min_seconds: float = 2.0, progress: bool = True,
              repro_timing: Path | None = Path("reports/repro_timing.json")) -> list[Measure]:
    """Every measure on the config's cached features (train and evaluation split) and images."""
    device = resolve_device(cfg.run.device)
    rows = measure_feature_extraction(cfg, device, images, repeats, progress)
    evaluated = first_images(load_features(cfg, cfg.data.eval_split), images)
    model, _, source = concept_model(cfg, device, evaluated)
    k = cfg.acseg.prototypes
    step = measure_concept_step(model, evaluated, device, min_seconds, source)
    km = measure_kmeans_per_image(model, evaluated, k, device, min_seconds, progress)
    spectral = measure_spectral_per_image(model, evaluated, k, device, min_seconds, progress)
    sk1 = measure_sklearn_kmeans_per_image(model, evaluated, k, "auto", device, min_seconds, progress)
    sk10 = measure_sklearn_kmeans_per_image(model, evaluated, k, 10, device, min_seconds, progress)
    rows += [step, km, spectral, sk1, sk10, ratio("concept_step_speedup_vs_kmeans", step, km),
             ratio("concept_step_speedup_vs_spectral", step, spectral),
             ratio("concept_step_speedup_vs_sklearn_kmeans", step, sk1),
             ratio("concept_step_speedup_vs_sklearn_kmeans_ninit10", step, sk10)]
    train = load_features(cfg, cfg.data.train_split)
    rows += measure_training(cfg, train, device, steps, warmup_steps)
    predict, _ = acseg_predictor(cfg, device, evaluated)
    rows += measure_evaluation(cfg, evaluated, device, min_seconds, source, predict)
    rows += measure_eval_memory(cfg, train, memory_images)
    rows += repro_rows(repro_timing) if repro_timing else []
    return rows


# ------------------------------------------------------------------------------------------------- report


def machine(device: torch.device) -> dict[str, str]:
    from bench.tracking import cpu_name

    info = {"cpu": cpu_name(), "cores": str(os.cpu_count()), "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":
        info["device"] += f" ({torch.cuda.get_device_name(device)})"
    return info


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def write_report(rows: list[Measure], out: str | Path, command: str, machine_info: dict[str, str]) -> tuple[Path, Path]:
    """performance.csv (measure,value,unit) and performance.md in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "performance.csv", out / "performance.md"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "value", "unit"])
        writer.writerows([r.measure, f"{r.value:.6g}", r.unit] for r in rows)

    by_name = {r.measure: r for r in rows}
    lines = ["# Performance", "", f"Regenerate with `{command}` (writes `{csv_path}` and this file).", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info.items()) + ".", "",
             "| measure | value | unit | how |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.measure} | {_fmt(r.value)} | {r.unit} | {r.note} |" for r in rows]
    lines += ["", "Targets of issue 6:"]
    for name, target in (("feature_overhead_ratio", FEATURE_OVERHEAD_TARGET),
                         ("eval_peak_rss_ratio_2x_split", RSS_RATIO_TARGET)):
        if name in by_name:
            v = by_name[name].value
            lines.append(f"- {name} {_fmt(v)} (target <= {target}): {'met' if v <= target else 'NOT met'}")
    if "concept_step_speedup_vs_kmeans" in by_name:
        lines.append(f"- the concept step >= {CONCEPT_SPEEDUP_TARGET}x faster than per-image k-means:")
        for name, what in (("concept_step_speedup_vs_kmeans", "this harness's vectorised torch k-means "
                            "(acseg/kmeans.py, one k-means++ draw, 50 iterations)"),
                           ("concept_step_speedup_vs_sklearn_kmeans", "scikit-learn's KMeans at its current "
                            "defaults (one run)"),
                           ("concept_step_speedup_vs_sklearn_kmeans_ninit10", "scikit-learn's KMeans with 10 "
                            "restarts (its default until 1.4, when the paper was written)")):
            if name in by_name:
                v = by_name[name].value
                lines.append(f"  - vs {what}: {_fmt(v)}x, {'met' if v >= CONCEPT_SPEEDUP_TARGET else 'NOT met'}")
    lines += ["", "Notes:",
              "- All rows come from one run, side by side, so their ratios hold even when the machine is noisy; "
              "absolute rates depend on the machine and on the thread count above.",
              f"- Threads: {machine_info.get('torch threads', '?')} (torch's default, which follows "
              "OMP_NUM_THREADS, unless `--threads` is given; scikit-learn's BLAS is limited to the same number).",
              "- The concept step is timed in batches (that is how ACSeg runs); k-means and spectral clustering "
              "per image (that is what they are), on the same centred patch features.",
              "- Training rates time only the steps after the warm-up steps (an optimizer step hook), not the "
              "set-up; the config's steps are overridden, which changes the learning-rate schedule, not the cost.",
              "- Peak memory: each evaluation runs in a fresh spawned process reading a cache entry that holds "
              "exactly its N (or 2N) images, as `load_features` reads a split's entry; peak RSS is the child's "
              "VmHWM (its `ru_maxrss` would include the parent's peak, which Linux carries over fork and exec)."]
    if "dvc_repro_cold_s" not in by_name:
        lines += ["- `dvc_repro_cold_s` and `dvc_repro_warm_s` are not measured by this command (25-55 "
                  "minutes): run `bash pipelines/time_repro.sh`, which writes `reports/repro_timing.json`, then "
                  "this command again to copy them here."]
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
