"""The pipeline's steps, each a function of the Config: what the CLI commands and the DVC stages run.

fetch -> features (per split) -> train (per seed) -> evaluate (per method and seed) -> results.
Each step writes its outputs atomically into its own folder, then logs an MLflow run.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench import tracking
from bench.config import Config
from bench.data import atomic_path, fetch, fetch_record, get_spec, locate, write_json_atomic
from bench.features import ensure_features, load_features, resolve_device

log = logging.getLogger(__name__)

METHODS = ("acseg", "kmeans", "stego")


def run_dir(cfg: Config, method: str, seed: int) -> Path:
    return Path(cfg.run.runs_dir) / method / f"seed{seed}"


def n_clusters(cfg: Config, method: str) -> int:
    k = {"acseg": cfg.classifier.n_classes, "kmeans": cfg.kmeans.k}.get(method, 0)
    return k or get_spec(cfg.data.dataset).n_classes


def eval_dir(cfg: Config, method: str, seed: int, crf: bool) -> Path:
    """Where an evaluation's outputs go: the run folder, or its crf/ subfolder for CRF-refined predictions."""
    return run_dir(cfg, method, seed) / "crf" if crf else run_dir(cfg, method, seed)


# ------------------------------------------------------------------------------------------------- fetch


def run_fetch(cfg: Config) -> dict:
    spec = get_spec(cfg.data.dataset)
    root, splits = fetch(spec, cfg.data.local_copy, cfg.data.download_dir)
    record = fetch_record(spec, splits, root)
    for split in {cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split}:
        if split not in splits:
            from bench.data import DatasetError

            try:
                spec.samples(root, split)  # raises saying what is missing (a folder, a split list)
                reason = ""
            except DatasetError as e:
                reason = f": {e}"
            raise DatasetError(f"{spec.title}: the params use split {split!r}, which is absent at {root} "
                               f"(present: {sorted(splits)}){reason or f'. To get it: {spec.how_to_get}'}")
    write_json_atomic(cfg.data.manifest_out, record)
    log.info("verified %s at %s: %s (absent: %s)", spec.title, root, splits, record["splits_absent"])
    return record


def run_features(cfg: Config, split: str, progress: bool = True) -> Path:
    return ensure_features(cfg, split, progress=progress)


# ------------------------------------------------------------------------------------------------- train


def save_model(path: Path, cfg: Config, model, extra: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict(), **extra}, tmp)


def load_model(cfg: Config, seed: int, device: torch.device):
    from bench.train import build_model

    path = run_dir(cfg, "acseg", seed) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}: run `acseg-bench train --seed {seed}` first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(cfg, saved["feature_dim"], torch.zeros(saved["feature_dim"]), saved["n_classes"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved


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


def run_train(cfg: Config, seed: int, progress: bool = True) -> Path:
    from bench.train import train_acseg

    device = resolve_device(cfg.run.device)
    train = load_features(cfg, cfg.data.train_split)
    k = n_clusters(cfg, "acseg")
    cluster = load_features(cfg, cfg.data.cluster_split) if cfg.data.cluster_split != cfg.data.train_split else None
    with training_threads(cfg) as threads:
        model, history, n_regions = train_acseg(cfg, seed, train, k, device, progress=progress, cluster=cluster)
        extra = {"feature_dim": train.features.shape[-1], "n_classes": k,
                 "weights_sha256": train.meta["weights_sha256"]}
        if cfg.classifier.overcluster_k:  # a second classifier with K' > classes, for the over-clustering metric
            from bench.train import classifier_centroids

            centroids, _ = classifier_centroids(cfg, model, cluster or train, cfg.classifier.overcluster_k, seed,
                                                device)
            extra["overcluster_centroids"] = centroids.cpu()
    log_lines = ["step,loss,lr"] + [f"{s},{l:.6f},{r:.3e}" for s, l, r in zip(history.steps, history.loss, history.lr)]
    return save_training(cfg, "acseg", seed, train, model, extra, history, log_lines,
                         {"concept_regions": n_regions, "torch_threads": threads}, {},
                         f"ACSeg {cfg.acseg.loss} loss, k={cfg.acseg.prototypes}, seed {seed}")


def save_training(cfg: Config, method: str, seed: int, train, model, extra: dict, history, log_lines: list[str],
                  summary_extra: dict, series_extra: dict, title: str) -> Path:
    """A trained model's outputs in its run folder (model, train_log.csv, train_summary.json, loss curve) and
    its MLflow run; ``history`` has steps, loss, steps_per_second and seconds."""
    from bench.figures import loss_curve

    out = run_dir(cfg, method, seed)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", cfg, model, extra)
    (out / "train_log.csv").write_text("\n".join(log_lines) + "\n")
    summary = {"final_loss": history.loss[-1], "steps_per_second": history.steps_per_second,
               "train_seconds": history.seconds, **summary_extra}
    write_json_atomic(out / "train_summary.json", summary)
    curve = loss_curve(history.steps, history.loss, out / "loss_curve.png", title)
    tracking.log_run(cfg, f"train-{method}-seed{seed}",
                     tracking.standard_tags(cfg, cfg.data.train_split, seed, train.meta["weights_sha256"], method),
                     summary, series={"loss": list(zip(history.steps, history.loss)), **series_extra},
                     artifacts=[curve, out / "train_log.csv"])
    return out


def run_stego_knn(cfg: Config) -> Path:
    """STEGO's k-NN positives over the training split (cached once per feature cache entry)."""
    from bench.stego import ensure_knn

    return ensure_knn(cfg, cfg.data.train_split)


def run_train_stego(cfg: Config, seed: int, progress: bool = True) -> Path:
    """Train STEGO's head and cluster probe on cached features; the last step is the model (no labels)."""
    from bench.stego import ensure_knn, load_knn, train_stego

    device = resolve_device(cfg.run.device)
    train = load_features(cfg, cfg.data.train_split)
    ensure_knn(cfg, cfg.data.train_split, train)
    k = n_clusters(cfg, "stego")
    with training_threads(cfg) as threads:
        model, history = train_stego(cfg, seed, train, load_knn(cfg, cfg.data.train_split), k, device, progress)
    names = ["self", "knn", "rand", "probe"]
    log_lines = ["step,loss," + ",".join(names)] + [
        f"{step},{loss:.6f}," + ",".join(f"{history.terms[n][i]:.6f}" for n in names)
        for i, (step, loss) in enumerate(zip(history.steps, history.loss))]
    extra = {"feature_dim": train.features.shape[-1], "n_classes": k, "weights_sha256": train.meta["weights_sha256"]}
    return save_training(cfg, "stego", seed, train, model, extra, history, log_lines,
                         {**history.correlation_summary(), "torch_threads": threads},
                         {f"loss_{n}": list(zip(history.steps, history.terms[n])) for n in names},
                         f"STEGO correspondence loss, seed {seed}")


def load_stego(cfg: Config, seed: int, device: torch.device):
    from bench.stego import StegoSegmenter

    path = run_dir(cfg, "stego", seed) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained STEGO model at {path}: run `acseg-bench baseline stego --seed {seed}` "
                                "first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = StegoSegmenter(saved["feature_dim"], cfg.stego.code_dim, saved["n_classes"], cfg.stego.dropout,
                           torch.zeros(saved["feature_dim"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved


# ---------------------------------------------------------------------------------------------- evaluate


def _concept_prediction(seg):
    """ACSeg's segments are its concepts, each carrying its class."""
    return seg.concept_scores, seg.concept_classes


def build_predictor(cfg: Config, method: str, seed: int, device: torch.device):
    """(predict(features, size, cls_attention, names) -> Prediction, weights sha256, extra metrics)."""
    from bench.evaluate import Prediction

    if method == "acseg":
        model, saved = load_model(cfg, seed, device)
        counts: list[torch.Tensor] = []
        crops = _crop_encoder(cfg, device)

        def predict(features, size, cls_attention, names):
            seg = model(features, size, cls_attention, crops(model, features, names) if crops else None)
            counts.append(seg.n_concepts.cpu())
            return Prediction(*_concept_prediction(seg))

        def extra():
            c = torch.cat(counts).float()
            return {"concepts_per_image_mean": c.mean().item(), "concepts_per_image_min": c.min().item(),
                    "concepts_per_image_max": c.max().item()}, torch.cat(counts)

        return predict, saved["weights_sha256"], extra
    if method == "kmeans":
        model, sha = fitted_kmeans(cfg, seed)
        model = model.to(device)
        return (lambda f, s, a, n: Prediction(model(f, s))), sha, lambda: ({}, None)
    if method == "stego":
        model, saved = load_stego(cfg, seed, device)
        return (lambda f, s, a, n: Prediction(model(f, s))), saved["weights_sha256"], lambda: ({}, None)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _crop_encoder(cfg: Config, device: torch.device):
    """The evaluation split's crop encoder when ACSeg's classifier reads re-encoded crops, else None."""
    if cfg.classifier.regions != "crops":
        return None
    from bench.crops import CropEncoder

    return CropEncoder(cfg, cfg.data.eval_split, device)


def fitted_kmeans(cfg: Config, seed: int):
    """The k-means baseline of a seed: fitted once (by its evaluation) and saved as the run's model.pt, then
    reused by its CRF row; a saved fit of other data, features or k-means settings is fitted again."""
    from bench.baselines import KMeansSegmenter, fit_kmeans_baseline

    path = run_dir(cfg, "kmeans", seed) / "model.pt"
    fit_key = cfg.hash("data", "backbone", "features", "kmeans")
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("fit_key") == fit_key:
            state = saved["state_dict"]
            model = KMeansSegmenter(state["centroids"], state["feature_mean"], cfg.kmeans.cosine)
            return model, saved["weights_sha256"]
    fit = load_features(cfg, cfg.data.cluster_split)
    model = fit_kmeans_baseline(cfg, fit, n_clusters(cfg, "kmeans"), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, cfg, model, {"fit_key": fit_key, "weights_sha256": fit.meta["weights_sha256"]})
    return model, fit.meta["weights_sha256"]


def overcluster_k(cfg: Config, method: str) -> int:
    return cfg.classifier.overcluster_k if method == "acseg" else cfg.kmeans.overcluster_k


def build_overcluster_predictor(cfg: Config, method: str, seed: int, device: torch.device):
    """predict() of the same method with K' > classes clusters (the over-clustering metric's clustering)."""
    from bench.evaluate import Prediction

    k = overcluster_k(cfg, method)
    if method == "acseg":
        from bench.train import build_model

        _, saved = load_model(cfg, seed, device)
        if "overcluster_centroids" not in saved or saved["overcluster_centroids"].shape[0] != k - int(
                cfg.classifier.background == "cls_attention"):
            raise FileNotFoundError(f"the model in {run_dir(cfg, method, seed)} has no over-clustering classifier "
                                    f"with K'={k}: run `acseg-bench train --seed {seed}` with classifier.overcluster_k={k}")
        model = build_model(cfg, saved["feature_dim"], torch.zeros(saved["feature_dim"]), k)
        model.load_state_dict({**saved["state_dict"], "class_centroids": saved["overcluster_centroids"]})
        model = model.to(device).eval()
        crops = _crop_encoder(cfg, device)

        def predict(features, size, cls_attention, names):
            regions = crops(model, features, names) if crops else None
            return Prediction(*_concept_prediction(model(features, size, cls_attention, regions)))

        return predict
    from bench.baselines import fit_kmeans_baseline

    fitted = fit_kmeans_baseline(cfg, load_features(cfg, cfg.data.cluster_split), k, seed).to(device)
    return lambda f, s, a, n: Prediction(fitted(f, s))


def run_evaluate(cfg: Config, method: str, seed: int, progress: bool = True, qualitative: int = 4,
                 crf: bool = False) -> dict:
    """Evaluate one trained (or fitted) method on the evaluation split; ``crf``: dense-CRF post-processing,
    written to the run's crf/ folder."""
    from bench.data import SegmentationSplit
    from bench.evaluate import evaluate
    from bench.figures import qualitative_grid

    spec = get_spec(cfg.data.dataset)
    device = resolve_device(cfg.run.device)
    split = cfg.data.eval_split
    feats = load_features(cfg, split, stream=True)  # memory flat in the split size
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    dataset = SegmentationSplit(spec, root, split)
    predict, sha, extra = build_predictor(cfg, method, seed, device)
    torch.manual_seed(seed)
    kept: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def keep_first(names, clusters, labels):
        for name, c, lab in zip(names, clusters, labels):
            if len(kept) < qualitative:
                kept.append((name, c, lab))

    ev = evaluate(predict, feats, spec, dataset.read_label, n_clusters(cfg, method), device,
                  progress=progress, on_batch=keep_first, crf=cfg.crf if crf else None,
                  read_image=dataset.read_image, crf_alpha=cfg.crf.alpha, crf_workers=cfg.crf.workers)
    extra_metrics, concept_counts = extra()
    overcluster = {}
    if overcluster_k(cfg, method) and not crf:  # a separate metric: K' > classes, majority (many-to-one) matching
        from acseg.metrics import overclustering_miou

        k = overcluster_k(cfg, method)
        oc = evaluate(build_overcluster_predictor(cfg, method, seed, device), feats, spec, dataset.read_label, k,
                      device, progress=progress)
        scores = overclustering_miou(oc.confusion)
        overcluster = {"overcluster_k": k, "miou_overcluster": scores.miou, "acc_overcluster": scores.accuracy,
                       "overcluster": {"k": k, "matching": "majority (many-to-one)", "miou": scores.miou,
                                       "acc": scores.accuracy,
                                       "per_class_iou": dict(zip(spec.class_names, scores.per_class_iou)),
                                       "mapping": scores.mapping}}
    out = eval_dir(cfg, method, seed, crf)
    out.mkdir(parents=True, exist_ok=True)
    if overcluster:
        np.savetxt(out / "confusion_overcluster.csv", oc.confusion, fmt="%d", delimiter=",")
    mapping = np.array(ev.scores.mapping)
    rows = [(name, dataset[dataset.names.index(name)][0].permute(1, 2, 0).numpy(), lab.numpy(),
             np.where(c.numpy() >= 0, mapping[c.numpy().clip(0)], -1)) for name, c, lab in kept]
    figure = qualitative_grid(rows, out / "qualitative.png",
                              f"{method}{' + CRF' if crf else ''} seed {seed}, {spec.title} {split}",
                              spec.ignore_index)
    np.savetxt(out / "confusion.csv", ev.confusion, fmt="%d", delimiter=",")
    if rows:
        save_examples(out / "examples.npz", rows)
    if concept_counts is not None and not crf:  # the counts do not depend on the CRF
        (out / "concepts_per_image.csv").write_text(
            "image,concepts\n" + "".join(f"{n},{int(c)}" + "\n" for n, c in zip(feats.names, concept_counts)))
    metrics = {
        "dataset": spec.name, "dataset_title": spec.title, "split": split, "method": method,
        "backbone": cfg.backbone.name, "weights": tracking_label(cfg), "weights_sha256": sha,
        "resolution": f"{cfg.features.height}x{cfg.features.width}", "feature_type": cfg.features.type,
        "cluster_split": cfg.data.cluster_split, "crf": crf, "seed": seed, "n_images": ev.n_images,
        "n_clusters": n_clusters(cfg, method), "clusters_used": int((ev.confusion.sum(1) > 0).sum()),
        "miou": ev.scores.miou, "acc": ev.scores.accuracy,
        "per_class_iou": dict(zip(spec.class_names, ev.scores.per_class_iou)),
        "mapping": ev.scores.mapping, "config_hash": cfg.hash(), **extra_metrics, **overcluster,
    }
    write_json_atomic(out / "metrics.json", metrics)
    tracking.log_run(
        cfg, f"evaluate-{method}{'-crf' if crf else ''}-seed{seed}",
        {**tracking.standard_tags(cfg, split, seed, sha, method), "crf": str(crf).lower()},
        {"miou": ev.scores.miou, "acc": ev.scores.accuracy, "clusters_used": metrics["clusters_used"], **extra_metrics,
         **{k: v for k, v in overcluster.items() if k in ("miou_overcluster", "acc_overcluster")},
         **{f"iou_{c}": v for c, v in zip(spec.class_names, ev.scores.per_class_iou) if np.isfinite(v)}},
        artifacts=[figure, out / "metrics.json", out / "confusion.csv"],
    )
    return metrics


def save_examples(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """The first evaluation images (fixed by the split's order) with their ground truth and matched prediction,
    so the report can set methods side by side without recomputing anything. Sizes may differ per image."""
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
    from bench.backbones import weights_label

    return weights_label(cfg.backbone)


def run_diagnose(cfg: Config, seed: int, progress: bool = True) -> dict:
    """Learned concepts vs per-image k-means on the evaluation split (see bench/diagnose.py)."""
    from bench.data import SegmentationSplit
    from bench.diagnose import diagnose

    spec = get_spec(cfg.data.dataset)
    device = resolve_device(cfg.run.device)
    split = cfg.data.eval_split
    model, _ = load_model(cfg, seed, device)
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    report = diagnose(model, load_features(cfg, split), spec, SegmentationSplit(spec, root, split).read_label, device,
                      seed=seed, progress=progress)
    report.update(split=split, seed=seed)
    write_json_atomic(run_dir(cfg, "acseg", seed) / "diagnostics.json", report)
    return report


# ----------------------------------------------------------------------------------------------- results

RESULT_COLUMNS = ["dataset", "split", "method", "backbone", "weights", "resolution", "feature_type",
                  "cluster_split", "crf", "seed", "miou", "acc", "config_hash"]
# The over-clustering metric (K' > classes, majority matching) has its own columns, never the main mIoU's.
OVERCLUSTER_COLUMNS = ("overcluster_k", "miou_overcluster", "acc_overcluster")


def collect_results(cfg: Config) -> Path:
    """Every evaluated run under run.runs_dir -> one tidy row each in run.results_csv, and the mean and std
    over seeds beside it in <name>_summary.json (each results file has its own summary)."""
    import pandas as pd

    base = Path(cfg.run.runs_dir)
    rows = []
    found = sorted(p for method in METHODS for p in (base / method).rglob("metrics.json"))  # not the ablations
    for path in found:
        row = {**json.loads(path.read_text()), "run": str(path.parent.relative_to(base))}
        folder = path.parent.parent if path.parent.name == "crf" else path.parent
        trained = folder / "train_summary.json"  # trained methods: training speed and final loss
        if trained.is_file():
            summary = json.loads(trained.read_text())
            row.update({k: v for k, v in summary.items() if k in ("steps_per_second", "final_loss", "torch_threads")})
        row.update({f"iou_{c}": v for c, v in row.get("per_class_iou", {}).items()})  # the report's heatmap
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no evaluated runs under {cfg.run.runs_dir}: run `acseg-bench evaluate` first")
    per_class = list(dict.fromkeys(c for row in rows for c in row if c.startswith("iou_")))
    extra = [c for c in ("run", "clusters_used", "concepts_per_image_mean", "steps_per_second", "final_loss",
                         "torch_threads")
             + OVERCLUSTER_COLUMNS
             if c in pd.DataFrame(rows)] + per_class
    df = pd.DataFrame(rows)[RESULT_COLUMNS + extra].sort_values(["dataset", "split", "method", "crf", "seed", "run"])
    df = df.round({"miou": 2, "acc": 2, "concepts_per_image_mean": 2, "steps_per_second": 2, "final_loss": 4,
                   "miou_overcluster": 2, "acc_overcluster": 2, **{c: 2 for c in per_class}})
    out = Path(cfg.run.results_csv)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    overclustered = {f"{c}_{f}": (c, f) for c in ("miou_overcluster", "acc_overcluster") if c in df
                     for f in ("mean", "std")}
    summary = (df.groupby(["dataset", "split", "method", "backbone", "crf"])
               .agg(miou_mean=("miou", "mean"), miou_std=("miou", "std"), acc_mean=("acc", "mean"),
                    acc_std=("acc", "std"), seeds=("seed", "count"), **overclustered).round(2).reset_index())
    write_json_atomic(out.with_name(f"{out.stem}_summary.json"), {"rows": summary.to_dict(orient="records")})
    return out


# ------------------------------------------------------------------------------------------------ report


def run_report(cfg: Config, ablations: str | Path | None, out: str | Path) -> Path:
    """reports/README.md and figures from the results CSV, the ablations CSV (if present) and ACSeg's
    concepts-per-image CSVs (bench/report.py)."""
    import pandas as pd

    from bench.report import ReportInputs, build_report

    results_csv = Path(cfg.run.results_csv)
    if not results_csv.is_file():
        raise FileNotFoundError(f"no results at {results_csv}: run `acseg-bench results` (or `dvc repro`) first")
    ablation_table = pd.read_csv(ablations) if ablations and Path(ablations).is_file() else None
    files = sorted(Path(cfg.run.runs_dir).glob("acseg/seed*/concepts_per_image.csv"))
    concepts = pd.concat([pd.read_csv(f).assign(seed=int(f.parent.name[len("seed"):])) for f in files]) if files else None
    results = pd.read_csv(results_csv)
    st = cfg.stego
    notes = [f"ACSeg: trained for {cfg.train.steps} steps (main table)"
             + (f"; every ablation point for {cfg.ablations.train_steps} steps (`ablations.train_steps`), its "
                "default point included, so an ablation table compares like with like"
                if ablation_table is not None else "")]
    if "stego" in set(results.method):
        notes.append(f"STEGO: trained on cached features for {st.steps} steps, weights self/k-NN/random "
                     f"{st.w_self}/{st.w_knn}/{st.w_rand}, shifts {st.shift_self}/{st.shift_knn}/{st.shift_rand} "
                     f"(`stego` in the params), last step kept; no setting of it was chosen with labels")
    seed = cfg.run.seeds[0]
    examples = {m: load_examples(p) for m in ("kmeans", "stego", "acseg")
                if (p := run_dir(cfg, m, seed) / "examples.npz").is_file()}
    inputs = ReportInputs(results, ablation_table, concepts, command="dvc repro", config_hash=cfg.hash(),
                          git_commit=tracking.git_commit(), notes=notes, examples=examples, examples_seed=seed,
                          ignore_index=get_spec(cfg.data.dataset).ignore_index)
    return build_report(inputs, out)
