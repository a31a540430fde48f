"""The pipeline's measures after the features: ACSeg's inference, training steps per second (ACSeg and STEGO),
evaluation speed with and without the dense CRF, the CRF stage's one pass, the peak memory of a streaming
evaluation; and the ``dvc repro`` wall times copied from their timing file."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from acseg.stego import knn_table
from bench import cache
from bench.config import Config, with_overrides
from bench.data import SegmentationSplit, dataset_spec, locate
from bench.datasets import DATASETS
from bench.evaluate import evaluate, evaluate_all
from bench.features import CachedFeatures, read_features, resolve_device
from bench.methods import get_method
from bench.methods.acseg import train_generator
from bench.methods.stego import pooled_features, train_stego
from bench.perf.common import EVAL_BATCH, RSS_RATIO_TARGET, acseg_predictor, eval_batches, first_images
from bench.store import load_fitted, run_dir
from bench.timing import Measure, peak_rss_mb, rate, ratio, seconds, status_mb, step_clock, steps_per_second

log = logging.getLogger(__name__)


def eval_inputs(cfg: Config, split: str):
    """(dataset spec, the split's SegmentationSplit: labels and images) of the configured dataset."""
    spec = dataset_spec(cfg)
    return spec, SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), split)


# ---------------------------------------------------------------------------------------- ACSeg inference


def measure_acseg_inference(cfg: Config, model, feats: CachedFeatures, device: torch.device,
                            min_seconds: float, model_source: str) -> Measure:
    """ACSeg's whole inference after the backbone: the model's forward (concept step, concept classification,
    upsampling of the concept maps to each image's label resolution, per-pixel argmax, classes) in the
    evaluation's batches, on features already on the device."""
    _, dataset = eval_inputs(cfg, cfg.data.eval_split)
    label_size = [tuple(dataset.read_label(name).shape) for name in feats.names]
    batches = []
    for r in eval_batches(feats, key=lambda i: label_size[i]):
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


# --------------------------------------------------------------------------------------------- training


def measure_training(cfg: Config, train: CachedFeatures, device: torch.device, steps: int,
                     warmup: int) -> list[Measure]:
    """ACSeg's and STEGO's real training loops with steps = warm-up + timed steps, each step timed by an
    optimizer step hook (the one-off set-up, e.g. the feature mean, and the warm-up steps are left out)."""
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


def measure_evaluation(cfg: Config, feats: CachedFeatures, device: torch.device, min_seconds: float,
                       model_source: str, predict) -> list[Measure]:
    spec, dataset = eval_inputs(cfg, cfg.data.eval_split)
    n, k = len(feats.names), get_method("acseg").n_clusters(cfg)
    log.info("perf: evaluation of ACSeg on %d %s images, without and with the CRF", n, cfg.data.eval_split)
    plain = rate(lambda: evaluate(predict, feats, spec, dataset.read_label, k, device, progress=False),
                 n, device, min_seconds)
    with_crf = n / seconds(lambda: evaluate(predict, feats, spec, dataset.read_label, k, device, progress=False,
                                            crf=cfg.crf.params(), read_image=dataset.read_image,
                                            crf_alpha=cfg.crf.alpha, crf_workers=cfg.crf.workers),
                           device)
    where = (f"bench.evaluate.evaluate, ACSeg ({model_source}), first {n} {cfg.data.eval_split} images, "
             f"batch {EVAL_BATCH}")
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
    runs = [(m, s) for m in cfg.benchmark.crf_methods for s in cfg.benchmark.seeds
            if (run_dir(cfg, m, s) / "model.pt").is_file()]
    if len(runs) < 2:
        return []
    feats = first_images(feats, min(images, len(feats)))
    spec, dataset = eval_inputs(cfg, cfg.data.eval_split)
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


# ---------------------------------------------------------------------------------------------- memory


def eval_peak_rss(cfg: Config, spec, entry: str, split: str, threads: int) -> dict:
    """In a fresh process: a whole streaming evaluation of the feature cache entry ``entry`` (read as
    load_features reads one), labels of ``split`` of the dataset ``spec``; its peak resident memory at each
    stage, in MB."""
    DATASETS.setdefault(spec.name, spec)  # registered at run time (tests): absent in a new process
    torch.set_num_threads(threads)
    device = resolve_device(cfg.run.device)
    spec, dataset = eval_inputs(cfg, split)
    after_imports = peak_rss_mb()
    feats = read_features(Path(entry), stream=True)  # as the evaluation reads a split (bench.runs.run_evaluate)
    after_load = peak_rss_mb()
    predict, _ = acseg_predictor(cfg, device, feats)
    ev = evaluate(predict, feats, spec, dataset.read_label, get_method("acseg").n_clusters(cfg), device,
                  progress=False)
    end = status_mb("RssAnon", "RssFile")
    return {"n_images": ev.n_images, "peak_rss_mb": peak_rss_mb(), "after_imports_mb": after_imports,
            "after_features_mb": after_load, "end_anon_mb": end.get("RssAnon", float("nan")),
            "end_file_mb": end.get("RssFile", float("nan")),
            "features_mb": 2 * (math.prod(feats.rows.shape) + math.prod(feats.attention_rows.shape)) / 2**20}


def measure_eval_memory(cfg: Config, train: CachedFeatures, n: int) -> list[Measure]:
    """Peak RSS of a whole evaluation over N and 2N images of the training split (its first images written as
    their own cache entries), each in a fresh spawned process."""
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
