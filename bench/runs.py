"""The pipeline's steps, each a function of the Config, generic over (dataset, method, seed): what the CLI commands
and the DVC stages run.

fetch -> features (per split) -> train (per method and seed) -> evaluate (with and without the CRF) -> results.
Each step writes its outputs atomically into its run folder, ``<runs_dir>/<dataset>/<method>/seed<N>/``, then logs
an MLflow run. What differs between methods is in their registry entry (bench/methods).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from acseg.metrics import overclustering_miou
from bench import tracking
from bench.backbones import weights_label
from bench.config import Config
from bench.data import (DatasetError, SegmentationSplit, atomic_path, dataset_spec, fetch, fetch_record, get_spec,
                        locate, record_path, write_csv_atomic, write_json_atomic)
from bench.diagnose import diagnose
from bench.evaluate import evaluate, evaluate_all
from bench.features import ensure_features, load_features, resolve_device
from bench.figures import loss_curve, qualitative_grid
from bench.methods import get_method
from bench.store import (RunError, check_writable, eval_dir, load_fitted, run_dir, save_model, stale_evaluation,
                         updating)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ fetch, features


def run_fetch(cfg: Config) -> dict:
    spec = dataset_spec(cfg)
    root, splits = fetch(spec, cfg.data.local_copy, cfg.data.download_dir)
    record = fetch_record(spec, splits, root)
    for split in {cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split}:
        if split not in splits:
            try:
                spec.samples(root, split)  # raises saying what is missing (a folder, a split list)
                reason = ""
            except DatasetError as e:
                reason = f": {e}"
            raise DatasetError(f"{spec.title}: the params use split {split!r}, which is absent at {root} "
                               f"(present: {sorted(splits)}){reason or f'. To get it: {spec.how_to_get}'}")
    write_json_atomic(record_path(spec.name), record)
    log.info("verified %s at %s: %s (absent: %s)", spec.title, root, splits, record["splits_absent"])
    return record


def run_features(cfg: Config, split: str, progress: bool = True) -> Path:
    return ensure_features(cfg, split, progress=progress)


# ------------------------------------------------------------------------------------------------- train


@contextmanager
def training_threads(cfg: Config) -> Iterator[int]:
    """torch's CPU thread count set to run.train_threads inside the block (0: left as it is), restored after;
    yields the count in use."""
    before = torch.get_num_threads()
    if cfg.run.train_threads:
        torch.set_num_threads(cfg.run.train_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def run_train(cfg: Config, method: str, seed: int, progress: bool = True) -> Path:
    """Fit a method on the dataset's training/cluster splits; its run folder gets model.pt, train_log.csv,
    train_summary.json and loss_curve.png, and MLflow a run."""
    m = get_method(method)
    device = resolve_device(cfg.run.device)
    out = run_dir(cfg, method, seed)
    check_writable(out)  # a read-only or full runs/ is found now, not after the training
    with training_threads(cfg) as threads:
        fitted = m.fit(cfg, seed, device, progress)
    h = fitted.history
    summary = {"final_loss": h.loss[-1], "steps_per_second": h.steps_per_second, "train_seconds": h.seconds,
               "torch_threads": threads, **fitted.summary}
    with updating(out) as stage:  # all four files, or none
        save_model(stage / "model.pt", cfg, method, fitted.facts, fitted.model)
        (stage / "train_log.csv").write_text(h.csv())
        write_json_atomic(stage / "train_summary.json", summary)
        loss_curve(h.steps, h.loss, stage / "loss_curve.png", fitted.title or f"{m.title}, seed {seed}")
    series = {name: list(zip(h.steps, values)) for name, values in h.columns.items() if name != "step"}
    tracking.log_run(cfg, f"train-{cfg.data.dataset}-{method}-seed{seed}",
                     tracking.standard_tags(cfg, cfg.data.train_split, seed, fitted.facts["weights_sha256"], method),
                     {k: v for k, v in summary.items() if isinstance(v, (int, float))}, series=series,
                     artifacts=[out / "loss_curve.png", out / "train_log.csv"])
    return out


# ---------------------------------------------------------------------------------------------- evaluate


def run_evaluate(cfg: Config, method: str, seed: int, progress: bool = True, crf: bool = False) -> dict:
    """Evaluate one trained method on the evaluation split (``crf``: with dense-CRF post-processing)."""
    return evaluate_runs(cfg, [(method, seed)], crf=crf, progress=progress)[(method, seed)]


def evaluate_runs(cfg: Config, runs: list[tuple[str, int]], crf: bool = False, progress: bool = True,
                  qualitative: int = 4) -> dict[tuple[str, int], dict]:
    """Evaluate trained runs (method, seed) in one pass over the evaluation split: features, labels, images and
    each image's CRF kernels are read or built once for all of them. Each run gets its outputs (metrics.json,
    confusion.csv, segments_per_image.csv, examples.npz, qualitative.png) and an MLflow run."""
    spec = dataset_spec(cfg)
    device = resolve_device(cfg.run.device)
    split = cfg.data.eval_split
    fitted = {run: load_fitted(cfg, *run, device) for run in runs}  # every model checked before any work
    for run in runs:
        check_writable(eval_dir(cfg, *run, crf))
    feats = load_features(cfg, split, stream=True)  # memory flat in the split size
    dataset = SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), split)
    predictors = {run: get_method(run[0]).predictor(cfg, fitted[run][0], fitted[run][1], device, split)
                  for run in runs}
    shown = set(example_images(feats.names, qualitative))
    kept: dict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {run: {} for run in runs}

    def keep_examples(run, names, clusters, labels):
        for name, c, lab in zip(names, clusters, labels):
            if name in shown:
                kept[run][name] = (c, lab)

    torch.manual_seed(min(seed for _, seed in runs))
    evaluations = evaluate_all(predictors, feats, spec, dataset.read_label,
                               {run: get_method(run[0]).n_clusters(cfg) for run in runs}, device, progress=progress,
                               on_batch=keep_examples, crf=cfg.crf.params() if crf else None,
                               read_image=dataset.read_image, crf_alpha=cfg.crf.alpha, crf_workers=cfg.crf.workers)
    return {run: _write_evaluation(cfg, *run, crf, evaluations[run], predictors[run], fitted[run], feats, spec,
                                   dataset, kept[run], device, progress) for run in runs}


def _write_evaluation(cfg: Config, method: str, seed: int, crf: bool, ev, predictor, fitted, feats, spec, dataset,
                      kept, device, progress) -> dict:
    m, (model, facts), split = get_method(method), fitted, cfg.data.eval_split
    out = eval_dir(cfg, method, seed, crf)
    with updating(out) as stage:  # every file of the evaluation, or none (the old ones stay)
        metrics = _evaluation_files(cfg, method, seed, crf, ev, predictor, model, facts, feats, spec, dataset, kept,
                                    device, progress, stage)
    tracking.log_run(
        cfg, f"evaluate-{cfg.data.dataset}-{method}{'-crf' if crf else ''}-seed{seed}",
        {**tracking.standard_tags(cfg, split, seed, facts["weights_sha256"], method), "crf": str(crf).lower()},
        {"miou": ev.scores.miou, "acc": ev.scores.accuracy, "clusters_used": metrics["clusters_used"],
         **predictor.summary(),
         **{k: v for k, v in metrics.items() if k in ("miou_overcluster", "acc_overcluster")},
         **{f"iou_{c}": v for c, v in zip(spec.class_names, ev.scores.per_class_iou) if np.isfinite(v)}},
        artifacts=[out / "qualitative.png", out / "metrics.json", out / "confusion.csv"],
    )
    return metrics


def _evaluation_files(cfg: Config, method: str, seed: int, crf: bool, ev, predictor, model, facts, feats, spec,
                      dataset, kept, device, progress, out: Path) -> dict:
    """Write an evaluation's files into ``out``; its metrics."""
    m, split = get_method(method), cfg.data.eval_split
    overcluster = {}
    if m.overcluster_k(cfg) and not crf:  # a separate metric: K' > classes, majority (many-to-one) matching
        overcluster = _overclustering(cfg, m, model, facts, feats, spec, dataset, device, progress, out)
    mapping = np.array(ev.scores.mapping)
    rows = [(name, dataset.read_image(name) / 255.0, lab.numpy(), np.where(c.numpy() >= 0, mapping[c.numpy().clip(0)], -1))
            for name in sorted(kept, key=feats.names.index) for c, lab in [kept[name]]]
    qualitative_grid(rows, out / "qualitative.png", f"{method}{' + CRF' if crf else ''} seed {seed}, {spec.title} "
                     f"{split}", spec.ignore_index)
    np.savetxt(out / "confusion.csv", ev.confusion, fmt="%d", delimiter=",")
    save_examples(out / "examples.npz", rows)
    (out / "segments_per_image.csv").write_text("image,segments\n" + "".join(
        f"{n},{ev.segments_per_image[n]}\n" for n in feats.names))
    extra_metrics = predictor.summary()
    metrics = {
        "dataset": spec.name, "dataset_title": spec.title, "split": split, "method": method,
        "backbone": cfg.backbone.name, "weights": tracking_label(cfg), "weights_sha256": facts["weights_sha256"],
        "resolution": f"{cfg.features.height}x{cfg.features.width}", "feature_type": cfg.features.type,
        "cluster_split": cfg.data.cluster_split, "crf": crf, "seed": seed, "n_images": ev.n_images,
        "n_clusters": m.n_clusters(cfg), "clusters_used": int((ev.confusion.sum(1) > 0).sum()),
        "miou": ev.scores.miou, "acc": ev.scores.accuracy,
        "per_class_iou": dict(zip(spec.class_names, ev.scores.per_class_iou)),
        "mapping": ev.scores.mapping, "config_hash": cfg.hash(), **m.record(cfg), **extra_metrics, **overcluster,
        # the model evaluated: a retrained model.pt makes these metrics stale (bench/store.py)
        "model_sha256": facts["model"]["sha256"], "model_config_hash": facts["model"]["config_hash"],
        "model_state_sha256": facts["model"]["state_sha256"],
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _overclustering(cfg, method, model, facts, feats, spec, dataset, device, progress, out: Path) -> dict:
    k = method.overcluster_k(cfg)
    predict = method.overcluster_predictor(cfg, model, facts, device, cfg.data.eval_split)
    oc = evaluate(predict, feats, spec, dataset.read_label, k, device, progress=progress)
    np.savetxt(out / "confusion_overcluster.csv", oc.confusion, fmt="%d", delimiter=",")
    scores = overclustering_miou(oc.confusion)
    return {"overcluster_k": k, "miou_overcluster": scores.miou, "acc_overcluster": scores.accuracy,
            "overcluster": {"k": k, "matching": "majority (many-to-one)", "miou": scores.miou, "acc": scores.accuracy,
                            "per_class_iou": dict(zip(spec.class_names, scores.per_class_iou)),
                            "mapping": scores.mapping}}


def example_images(names: list[str], n: int) -> list[str]:
    """The images every evaluation keeps for the qualitative figures: ``n`` spread evenly over the split (in its
    sorted order), so video datasets show different scenes rather than consecutive frames."""
    if n <= 0 or not names:
        return []
    ordered = sorted(names)
    return [ordered[round(i * (len(ordered) - 1) / max(1, n - 1))] for i in range(min(n, len(ordered)))]


def save_examples(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """The example images with their ground truth and matched prediction, so the report can set methods side by
    side without recomputing anything. Sizes may differ per image."""
    arrays = {"names": np.array([r[0] for r in rows])}
    for i, (_, image, truth, pred) in enumerate(rows):
        arrays.update({f"image_{i}": (image * 255).round().astype(np.uint8), f"label_{i}": truth,
                       f"prediction_{i}": pred})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no suffix to it
        np.savez_compressed(f, **arrays)


def load_examples(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    with np.load(path) as z:
        return [(name, z[f"image_{i}"], z[f"label_{i}"], z[f"prediction_{i}"])
                for i, name in enumerate(z["names"].tolist())]


def tracking_label(cfg: Config) -> str:
    return weights_label(cfg.backbone)


def run_diagnose(cfg: Config, seed: int, progress: bool = True) -> dict:
    """ACSeg's learned concepts beside per-image k-means and the ground truth, and its classifier's ceiling, on the
    evaluation split (bench/diagnose.py; labels diagnose only)."""
    spec = dataset_spec(cfg)
    device = resolve_device(cfg.run.device)
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    model, _ = load_fitted(cfg, "acseg", seed, device)
    split, cluster = cfg.data.eval_split, cfg.data.cluster_split
    report = diagnose(cfg, model, load_features(cfg, split), spec, SegmentationSplit(spec, root, split).read_label,
                      device, seed=seed, progress=progress,
                      cluster=(load_features(cfg, cluster), SegmentationSplit(spec, root, cluster).read_label))
    report.update(split=split, seed=seed)
    write_json_atomic(run_dir(cfg, "acseg", seed) / "diagnostics.json", report)
    return report


# ----------------------------------------------------------------------------------------------- results

RESULT_COLUMNS = ["dataset", "split", "method", "backbone", "weights", "resolution", "feature_type",
                  "cluster_split", "crf", "seed", "miou", "acc", "config_hash"]
# From a run's train_summary.json: training speed and loss, and STEGO's diagnostics (per term, the fraction of
# sampled pairs that attract and their mean feature correlation; the clusters each readout uses).
TRAINING_COLUMNS = ("steps_per_second", "final_loss", "torch_threads", "shifts_mode",
                    *(f"{what}_{t}" for what in ("attract_fraction", "feature_correlation") for t in ("self", "knn", "rand")),
                    "probe_clusters_used", "kmeans_clusters_used", "probe_centroids_reseeded")
# The over-clustering metric (K' > classes, majority matching) has its own columns, never the main mIoU's.
OVERCLUSTER_COLUMNS = ("overcluster_k", "miou_overcluster", "acc_overcluster")


def collect_results(cfg: Config) -> Path:
    """Every evaluated run under ``run.runs_dir/<dataset>/<method>/`` (every dataset and method of the benchmark)
    -> one tidy row each in run.results_csv, and the mean and std over seeds beside it in <name>_summary.json."""
    import pandas as pd

    base = Path(cfg.run.runs_dir)
    rows = []
    found = sorted(p for dataset in cfg.benchmark.datasets for method in cfg.benchmark.methods
                   for folder in (base / dataset / method, base / "crf" / dataset / method)
                   for p in folder.glob("seed*/metrics.json"))
    stale = []
    for path in found:
        row = {**json.loads(path.read_text()), "run": str(path.parent.relative_to(base))}
        trained_in = base / row["dataset"] / row["method"] / path.parent.name  # a CRF evaluation's too
        why = stale_evaluation(row, trained_in / "model.pt")
        if why:
            stale.append(f"{path}: {why}")
            continue
        trained = trained_in / "train_summary.json"
        if trained.is_file():
            summary = json.loads(trained.read_text())
            row.update({k: v for k, v in summary.items() if k in TRAINING_COLUMNS})
            row.update({f"shift_{t}": v for t, v in (summary.get("shifts") or {}).items()})  # STEGO's shifts
        row.update({f"iou_{c}": v for c, v in row.get("per_class_iou", {}).items()})  # the report's heatmap
        rows.append(row)
    if stale:  # a table never mixes numbers of models that are no longer there
        raise RunError(f"{len(stale)} evaluation(s) no longer match their model, e.g. {stale[0]}: evaluate them "
                       "again (`acseg-bench evaluate`, or `dvc repro`)")
    if not rows:
        raise FileNotFoundError(f"no evaluated runs under {cfg.run.runs_dir}: run `acseg-bench evaluate` first")
    per_class = list(dict.fromkeys(c for row in rows for c in row if c.startswith("iou_")))
    extra = [c for c in ("run", "clusters_used", "concepts_per_image_mean", *TRAINING_COLUMNS, "shift_self",
                         "shift_knn", "shift_rand", *OVERCLUSTER_COLUMNS)
             if c in pd.DataFrame(rows)] + per_class
    df = pd.DataFrame(rows)[RESULT_COLUMNS + extra].sort_values(["dataset", "split", "method", "crf", "seed", "run"])
    df = df.round({"miou": 2, "acc": 2, "concepts_per_image_mean": 2, "steps_per_second": 2, "final_loss": 4,
                   "miou_overcluster": 2, "acc_overcluster": 2, **{c: 2 for c in per_class},
                   **{c: 4 for c in df.columns if c.startswith(("attract_", "feature_correlation_", "shift_"))}})
    if "torch_threads" in df:
        df["torch_threads"] = df["torch_threads"].astype("Int64")  # integers, blank for methods without training
    out = Path(cfg.run.results_csv)
    write_csv_atomic(out, df)
    overclustered = {f"{c}_{f}": (c, f) for c in ("miou_overcluster", "acc_overcluster") if c in df
                     for f in ("mean", "std")}
    summary = (df.groupby(["dataset", "split", "method", "backbone", "crf"])
               .agg(miou_mean=("miou", "mean"), miou_std=("miou", "std"), acc_mean=("acc", "mean"),
                    acc_std=("acc", "std"), seeds=("seed", "count"), **overclustered).round(2).reset_index())
    write_json_atomic(out.with_name(f"{out.stem}_summary.json"), {"rows": summary.to_dict(orient="records")})
    return out
