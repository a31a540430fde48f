"""The performance suite (`acseg-bench perf`): the harness's speed and memory numbers, measured side by side in
one run on the same images, so that their ratios hold on a noisy machine.

One function per measure, each returning :class:`bench.timing.Measure` rows; :func:`run_suite` runs them all and
:func:`write_report` writes ``performance.csv`` (``measure,value,unit``) and ``performance.md``. By concern:

- :mod:`bench.timing` (below the suite, shared with the concept-generator study): the clocks, rates, peak memory
  and FLOP counter every number here is taken with;
- :mod:`bench.perf.common`: the constants and the shared inputs (the images and features, the ACSeg model, the
  evaluation's batches);
- :mod:`bench.perf.extraction`: feature extraction, the real pipeline (:func:`bench.features.ensure_features`:
  decoding, resizing, the extractor with its hook and [CLS] attention, float16, the atomic cache write) on the
  evaluation split's first N images, into a temporary cache, against a bare loop of the same timm model's
  ``forward_features`` on the same images already resized and normalised, same sizes, batches and weights; one
  more pipeline round under cProfile says where the pipeline's time goes (``feature_pipeline_profile_*`` rows);
- :mod:`bench.perf.concepts`: the concept step (concept generator + cosine assignment + argmax) in batches, as it
  runs, against per-image scikit-learn ``KMeans`` at its current defaults (the paper's comparison) and against the
  concept-generator study's own per-image k-means (:func:`acseg.batched_kmeans.batched_kmeans`, built by the
  generator registry) on the same batches, each with its FLOP count per image; the images/s and FLOPs of every
  concept generator of the study;
- :mod:`bench.perf.measures`: ACSeg's inference after the backbone (the model's forward to per-pixel classes at
  the label resolution) on the cached features of the same N images, against the bare backbone forward
  (``acseg_inference_overhead``); training steps per second of ACSeg and STEGO (their real loops, after warm-up
  steps); evaluation images per second with and without the dense CRF (:func:`bench.evaluate.evaluate`), and the
  peak resident memory of a whole streaming evaluation of N and 2N images, each in a fresh process; ``dvc repro``
  wall times and the processor they were taken on, copied from ``reports/repro_timing.json``
  (``pipelines/time_repro.sh``) if present;
- :mod:`bench.perf.report`: performance.csv and performance.md.

A split without a valid feature cache entry is not an error: the suite extracts the first images it needs of that
split (``--images`` of the evaluation split; 2 x ``--memory-images`` of the training split) into a temporary
cache of its own, on the configured device, and says so. The configured cache is only ever read.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import Config
from bench.features import resolve_device
from bench.methods.acseg import ACSegPredictor
from bench.perf.common import (INFERENCE_OVERHEAD_TARGET, PROFILE_PREFIX, REQUIRED, TARGETS, concept_model,
                               first_images, suite_features)
from bench.perf.concepts import (concept_step_gflop, generator_perf_rows, kmeans_step, measure_batched_kmeans,
                                 measure_concept_step, measure_sklearn_kmeans_per_image)
from bench.perf.extraction import measure_feature_extraction
from bench.perf.measures import (measure_acseg_inference, measure_crf_stage, measure_eval_memory, measure_evaluation,
                                 measure_training, repro_processor, repro_rows)
from bench.perf.report import machine, write_report
from bench.timing import Measure, ratio

__all__ = ["PROFILE_PREFIX", "REQUIRED", "TARGETS", "Measure", "first_images", "generator_perf_rows", "machine",
           "repro_processor", "repro_rows", "run_suite", "write_report"]


def run_suite(cfg: Config, images: int = 24, memory_images: int = 150, steps: int = 20, warmup_steps: int = 3,
              repeats: int = 2, min_seconds: float = 2.0, progress: bool = True,
              repro_timing: Path | None = Path("reports/repro_timing.json"), profile: bool = True) -> list[Measure]:
    """Every measure on the config's images and cached features (evaluation and training split; the first images
    of a split without a cache are extracted for the run, see :func:`bench.perf.common.suite_features`)."""
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
        k = kmeans_step(cfg, model, device).slots  # scikit-learn's k: the study's k-means generator's
        step = measure_concept_step(model, evaluated, device, min_seconds, source)
        sk = measure_sklearn_kmeans_per_image(model, evaluated, k, device, min_seconds, progress)
        ours = measure_batched_kmeans(cfg, model, evaluated, device, min_seconds)
        rows += [step, sk[0], ours[0],
                 ratio("concept_step_speedup_vs_sklearn_kmeans", step, sk[0],
                       "concept_step_images_per_s / sklearn_kmeans_per_image_images_per_s (the paper's comparison)"),
                 ratio("concept_step_speedup_vs_batched_kmeans", step, ours[0],
                       "concept_step_images_per_s / batched_kmeans_images_per_s (the same batches, on the same "
                       "device)"),
                 concept_step_gflop(model, evaluated), sk[1], ours[1]]
        train, train_source = get(cfg.data.train_split, max(2 * memory_images, cfg.stego.knn + 1))
        rows += measure_training(cfg, train, device, steps, warmup_steps)
        rows += measure_evaluation(cfg, evaluated, device, min_seconds, source, ACSegPredictor(model))
        rows += measure_crf_stage(cfg, evaluated, device)
        rows += measure_eval_memory(cfg, train, memory_images)
        rows += generator_perf_rows(cfg, evaluated, train, min_seconds)  # the speed of every concept generator
    for r in rows:  # where the features came from
        if r.measure in ("acseg_inference_images_per_s", "concept_step_images_per_s", "eval_images_per_s"):
            r.note += f"; features: {eval_source}"
        elif r.measure in ("acseg_train_steps_per_s", "eval_peak_rss_mb_1x"):
            r.note += f"; features: {train_source}"
    rows += repro_rows(repro_timing) if repro_timing else []
    return rows
