"""The feature-extraction measure: the real pipeline against a bare timm loop on the same images, and one more
pipeline round under cProfile (where the pipeline's time goes)."""

from __future__ import annotations

import cProfile
import logging
import os
import pstats
import tempfile
import time

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm import tqdm

from bench.backbones import get_backbone_spec, load_backbone
from bench.config import Config, with_overrides
from bench.data import SegmentationSplit, dataset_spec, locate
from bench.features import ensure_features, input_size
from bench.perf.common import FEATURE_OVERHEAD_TARGET, PROFILE_PREFIX, FirstImages, registered
from bench.timing import Measure, ratio, seconds

log = logging.getLogger(__name__)

STAGE_NOTES = {
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


def profile_stages(stats: pstats.Stats, total: float) -> dict[str, float]:
    """Seconds of each stage of one ``ensure_features`` call from its cProfile statistics (cumulative times of
    the functions that make each stage, found by file and name; ``other`` is what is left of ``total``; a stage
    whose function is not found, renamed say, reads 0 and its time goes to ``other``)."""
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


def image_batches(dataset, batch_size: int) -> list[torch.Tensor]:
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
    spec = dataset_spec(cfg)
    split = cfg.data.eval_split
    subset = FirstImages(spec, n)
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
    batches = [((b - mean) / std).to(device) for b in image_batches(dataset, cfg.features.batch_size)]
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")

    def bare():
        with torch.inference_mode(), autocast:
            for b in batches:
                vit.forward_features(b)

    with torch.inference_mode(), autocast:
        vit.forward_features(batches[0])  # warm-up (one-off allocations), for both loops

    def pipeline():
        with tempfile.TemporaryDirectory(prefix="acseg-perf-features-") as tmp, registered(subset):
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
        stages = profile_stages(pstats.Stats(profiler), total)
        rows.append(Measure(f"{PROFILE_PREFIX}total_ms_per_image", 1000 * total / n, "ms/image",
                            f"one more pipeline round on the {n} images under cProfile (its overhead included)"))
        rows += [Measure(f"{PROFILE_PREFIX}{stage}_ms_per_image", 1000 * s / n, "ms/image", STAGE_NOTES[stage])
                 for stage, s in stages.items()]
    return rows
