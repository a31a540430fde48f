"""What every measure of the suite shares: its constants, and its inputs (the images and cached features it
measures on, the ACSeg model it times, the evaluation's batches)."""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from bench import cache
from bench.config import Config, with_overrides
from bench.data import dataset_spec
from bench.datasets import DATASETS
from bench.evaluate import _runs
from bench.features import CachedFeatures, ensure_features, load_features
from bench.methods import get_method
from bench.methods.acseg import ACSegPredictor, build_model
from bench.methods.base import feature_mean
from bench.store import load_fitted, run_dir

log = logging.getLogger(__name__)

EVAL_BATCH = 8  # bench.evaluate.evaluate's batch size: the concept step runs on batches of this size
FEATURE_OVERHEAD_TARGET = 1.10
INFERENCE_OVERHEAD_TARGET = 0.10
RSS_RATIO_TARGET = 1.10
TARGETS = {  # the performance targets: each at most this
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


def first_images(feats: CachedFeatures, n: int) -> CachedFeatures:
    if n > len(feats.names):
        raise ValueError(f"the performance suite asks for {n} images, but the cached split has only "
                         f"{len(feats.names)}: lower --images / --memory-images")
    end = int(feats.offsets[n])
    return CachedFeatures(feats.rows[:end], feats.attention_rows[:end], feats.grids[:n], feats.names[:n], feats.meta)


class FirstImages:
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
        return FirstImages(self._spec.bind(root), self._n)

    def samples(self, root, split):
        return self._spec.samples(root, split)[: self._n]


@contextmanager
def registered(spec) -> Iterator[None]:
    """``spec`` in the dataset registry inside the block (a config may name it), removed after."""
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
    with tempfile.TemporaryDirectory(prefix="acseg-perf-cache-") as tmp:
        def get(split: str, count: int) -> tuple[CachedFeatures, str]:
            path, meta = cache.cache_dir(cfg, split), cache.expected_meta(cfg, split)
            if cache.is_valid(path, meta):
                return load_features(cfg, split), f"feature cache {path}"
            subset = FirstImages(dataset_spec(cfg), count)
            log.warning("perf: no feature cache of %s/%s at %s: extracting its first %d images for this run only",
                        cfg.data.dataset, split, path, count)
            with registered(subset):
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
    model, _, source = concept_model(cfg, device, feats)
    return ACSegPredictor(model), source


def eval_batches(feats: CachedFeatures, key: Callable[[int], object] = lambda i: None,
                 size: int = EVAL_BATCH) -> list[range]:
    """The evaluation's batches (bench.evaluate.evaluate_all): windows of ``size`` consecutive images, each cut
    into runs of consecutive images with one patch grid (and one ``key``: the label size, where it matters)."""
    out = []
    for start in range(0, len(feats), size):
        keys = [(key(i), feats.grid(i)) for i in range(start, min(start + size, len(feats)))]
        out += [range(start + first, start + last) for first, last in _runs(keys)]
    return out


def prepared_batches(feats: CachedFeatures, device: torch.device) -> list[torch.Tensor]:
    """The cached features of every evaluation batch, on the device ([B, h, w, d] each)."""
    return [feats.take(r).features.to(device) for r in eval_batches(feats)]
