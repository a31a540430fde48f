"""Ablation sweeps: which of ACSeg's choices matter. A registry of named axes, their grid, and the runs.

Every point of a sweep is an ordinary configuration (the base config with the axis' parameters changed): it is
trained and evaluated by the same steps as the main pipeline (bench/runs.py) into its own run folder, and reuses
the feature cache of every run that shares its backbone, weights, feature type and resolution. A point whose
folder already holds metrics for exactly its config (same config hash) is not recomputed, so sweeps that share
points (every axis passes through the defaults) cost each point once.

An axis is one entry of :data:`AXES` (its name is the CLI option ``--<name>`` and the params key of
``ablations.sweeps``) plus, for `dvc repro`, one list in the params.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import cluster
from bench.cluster import Executor
from bench.config import Config, ConfigError, with_overrides
from bench.data import write_csv_atomic

log = logging.getLogger(__name__)


def _int(axis: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{axis.replace('_', '-')}: {text!r} is not an integer") from None

    return parse


def _choice(axis: str, choices: Callable[[], list[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices():
            raise ConfigError(f"--{axis.replace('_', '-')}: unknown value {text!r}; choose from {sorted(choices())}")
        return text

    return parse


def _switch(axis: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text.lower() in ("on", "true", "yes", "1"):
            return True
        if text.lower() in ("off", "false", "no", "0"):
            return False
        raise ConfigError(f"--{axis.replace('_', '-')}: {text!r} is not on/off")

    return parse


def _losses() -> list[str]:
    from acseg.losses import LOSSES

    return list(LOSSES)


def _feature_types() -> list[str]:
    from acseg.features import FEATURE_TYPES

    return list(FEATURE_TYPES)


def _backbones() -> list[str]:
    from bench.backbones import BACKBONES

    return [*BACKBONES, "random"]


def _backbone(name: str, cfg: Config) -> dict[str, Any]:
    """A registered backbone with timm's hub weights, or ``random``: the configured backbone with random weights
    (the control: what the method does without self-supervised features)."""
    if name == "random":
        return {"backbone.weights": "random", "backbone.weights_sha256": None,
                "backbone.weights_label": f"random init ({cfg.backbone.name}, control)"}
    if name == cfg.backbone.name:
        return {}
    return {"backbone.name": name, "backbone.weights": "hub", "backbone.weights_sha256": None,
            "backbone.weights_label": f"{name} (timm hub weights)"}


def _classifier(value: str, cfg: Config) -> dict[str, Any]:
    """What the concept classifier clusters: region means (of the raw or the centred features), or crops."""
    if value == "crops":
        return {"acseg.classifier.regions": "crops"}
    return {"acseg.classifier.regions": "mean", "acseg.classifier.raw_regions": value == "region_mean"}


def _classifier_value(cfg: Config) -> str:
    c = cfg.acseg.classifier
    return "crops" if c.regions == "crops" else "region_mean" if c.raw_regions else "region_mean_centred"


def _set(key: str) -> Callable[[Any, Config], dict[str, Any]]:
    return lambda value, cfg: {key: value}


@dataclass(frozen=True)
class Axis:
    name: str
    title: str  # how the report names it
    parse: Callable[[str], Any]
    overrides: Callable[[Any, Config], dict[str, Any]]
    current: Callable[[Config], Any]  # the base configuration's value (every sweep includes it)
    method: str = "acseg"  # the method whose choice it varies (the one its points train)


def _repel(text: str) -> tuple[float, float, float]:
    """A STEGO calibration rule: the percentages of self, k-NN and random pairs that repel, e.g. 70-70-90."""
    try:
        values = tuple(float(v) / 100 for v in text.split("-"))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < 1 for v in values):
        raise ConfigError(f"--stego-rule: {text!r} is not three percentages self-knn-random, e.g. 70-70-90")
    return values


def _rule_text(c: Config) -> str:
    s = c.stego
    return "-".join(f"{round(v * 100):d}" for v in (s.repel_self, s.repel_knn, s.repel_rand))


AXES: dict[str, Axis] = {a.name: a for a in [
    Axis("prototypes", "number of prototypes k", _int("prototypes"), _set("acseg.prototypes"),
         lambda c: c.acseg.prototypes),
    Axis("loss", "loss (the modularity loss or a variant of docs/method.md)", _choice("loss", _losses),
         _set("acseg.loss"), lambda c: c.acseg.loss),
    Axis("depth", "ACG depth N", _int("depth"), _set("acseg.depth"), lambda c: c.acseg.depth),
    Axis("self_attention", "prototype self-attention (on/off)", _switch("self_attention"),
         _set("acseg.self_attention"), lambda c: c.acseg.self_attention),
    Axis("feature", "backbone features (tokens or attention keys)", _choice("feature", _feature_types),
         _set("features.type"), lambda c: c.features.type),
    Axis("backbone", "backbone (a registered one with hub weights, or `random`: the control)",
         _choice("backbone", _backbones), _backbone,
         lambda c: "random" if c.backbone.weights == "random" else c.backbone.name),
    Axis("classifier", "concept classifier input (raw or centred region means, or re-encoded crops)",
         _choice("classifier", lambda: ["region_mean", "region_mean_centred", "crops"]), _classifier,
         _classifier_value),
    Axis("classes", "classifier K (0: the dataset's classes)", _int("classes"), _set("acseg.classifier.n_classes"),
         lambda c: c.acseg.classifier.n_classes),
    Axis("restarts", "concept classifier's k-means restarts (the lowest inertia wins)", _int("restarts"),
         _set("acseg.classifier.n_init"), lambda c: c.acseg.classifier.n_init),
    Axis("graph", "the loss's pixel graph (dense, k-NN, thresholded)", _choice("graph", lambda: ["dense", "knn",
                                                                                                 "threshold"]),
         _set("acseg.graph.kind"), lambda c: c.acseg.graph.kind),
    Axis("graph_features", "what the graph compares (tokens, keys or both)",
         _choice("graph_features", lambda: ["tokens", "keys", "both"]), _set("acseg.graph.features"),
         lambda c: c.acseg.graph.features),
    Axis("region_features", "what the concept classifier reads of a region (tokens, keys or both)",
         _choice("region_features", lambda: ["tokens", "keys", "both"]), _set("acseg.classifier.region_features"),
         lambda c: c.acseg.classifier.region_features),
    Axis("stego_rule", "STEGO's calibration rule: % of self / k-NN / random pairs that repel", _repel,
         lambda v, c: {"stego.repel_self": v[0], "stego.repel_knn": v[1], "stego.repel_rand": v[2]},
         lambda c: _repel(_rule_text(c)), method="stego"),
]}


def axes_method(axes) -> str:
    """The one method a sweep's axes vary (a sweep cannot mix methods)."""
    methods = {AXES[a].method for a in axes}
    if len(methods) != 1:
        raise ConfigError(f"a sweep varies one method; axes {sorted(axes)} belong to {sorted(methods)}")
    return methods.pop()


def axis_title(axis: str) -> str:
    """A sweep's title: its axes' titles joined (``depth+self_attention``)."""
    return " + ".join(AXES[a].title if a in AXES else a for a in axis.split("+"))


@dataclass(frozen=True)
class Point:
    axes: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def axis(self) -> str:
        return "+".join(self.axes)

    @property
    def value(self) -> str:
        return "+".join(_text(v) for v in self.values)

    @property
    def label(self) -> str:
        """The point's folder name, e.g. ``prototypes=5`` or ``depth=3,self_attention=off``."""
        return ",".join(f"{a}={_text(v)}" for a, v in zip(self.axes, self.values))


def _text(value: Any) -> str:
    if isinstance(value, tuple):  # a STEGO rule
        return "-".join(f"{round(v * 100):d}" for v in value)
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def parse_axes(raw: dict[str, str | list[Any] | None]) -> dict[str, list[Any]]:
    """{axis: "5,10,20" or a list} -> {axis: parsed values}; unknown axes and values are clear errors."""
    axes = {}
    for name, values in raw.items():
        if values is None or values == "" or values == []:
            continue
        if name not in AXES:
            raise ConfigError(f"unknown ablation axis {name!r}; axes: {sorted(AXES)}")
        items = [v.strip() for v in values.split(",")] if isinstance(values, str) else [_text(v) for v in values]
        if not all(items):
            raise ConfigError(f"--{name}: empty value in {values!r}")
        axes[name] = [AXES[name].parse(v) for v in items]
    if not axes:
        raise ConfigError(f"nothing to sweep: give at least one axis, e.g. --prototypes 5,10,20 (axes: {sorted(AXES)})")
    return axes


def grid(axes: dict[str, list[Any]], base: Config | None = None) -> list[Point]:
    """Several axes at once = their grid (every combination), in the order given. With ``base``, the base
    configuration's own point comes first when the grid lacks it (every table then has its reference row)."""
    names = tuple(axes)
    points = [Point(names, combo) for combo in itertools.product(*axes.values())]
    if base is not None:
        own = default_point(axes, base)
        if own not in points:
            points.insert(0, own)
    return points


def default_point(axes: dict[str, list[Any]], base: Config) -> Point:
    """The base configuration's own point on these axes (the reference row of their table)."""
    return Point(tuple(axes), tuple(AXES[a].current(base) for a in axes))


DEFAULT = "default"


def point_config(cfg: Config, point: Point, runs_dir: str | Path, sweep_name: str) -> Config:
    """The point's configuration: the base with the axis' parameters changed, in ``runs_dir``/``sweep_name``/
    <label>; an ACSeg point that changes nothing is the shared default point, in ``runs_dir``/default."""
    overrides: dict[str, Any] = {}
    for name, value in zip(point.axes, point.values):
        overrides.update(AXES[name].overrides(value, cfg))
    try:
        changed = with_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"ablation point {point.label}: {e}") from None
    shared = changed.to_dict() == cfg.to_dict() and axes_method(point.axes) == "acseg"
    folder = DEFAULT if shared else f"{sweep_name}/{point.label}"
    return with_overrides(changed, {"run.runs_dir": str(Path(runs_dir) / folder)})


def budget(cfg: Config) -> Config:
    """The base configuration of the ablations: the params with the ablations' training budget."""
    return with_overrides(cfg, {"acseg.train.steps": cfg.ablations.train_steps})


ROW_COLUMNS = ["dataset", "split", "method", "axis", "value", "default", "seed", "miou", "acc", "concepts_per_image_mean",
               "final_loss", "steps_per_second", "torch_threads", "train_steps", "backbone", "weights",
               "feature_type", "resolution", "crf", "config_hash", "run"]


def run_point(cfg: Config, seed: int, progress: bool = True, method: str = "acseg") -> dict:
    """Train and evaluate a method (ACSeg by default) at one point and seed (features extracted once if missing);
    reuse earlier metrics of exactly this config."""
    from bench.runs import run_evaluate, run_features, run_train

    metrics = finished(cfg, method, seed)
    if metrics is not None:
        return metrics
    for split in _splits(cfg):
        run_features(cfg, split, progress=progress)
    run_train(cfg, method, seed, progress=progress)
    return run_evaluate(cfg, method, seed, progress=progress)


def finished(cfg: Config, method: str, seed: int) -> dict | None:
    """The metrics of a run evaluated with exactly this config (same config hash, same recorded options), or None."""
    from bench.methods import get_method
    from bench.runs import run_dir

    metrics_path = run_dir(cfg, method, seed) / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("config_hash") == cfg.hash() and get_method(method).reusable(cfg, metrics):
            log.info("reusing %s (same config)", metrics_path)
            return metrics
    return None


def _splits(cfg: Config) -> list[str]:
    """The splits a point reads features of: training, clustering, evaluation."""
    return sorted({cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split})


def sweep(cfg: Config, axes: dict[str, list[Any]], seeds: list[int], runs_dir: str | Path, out_csv: str | Path,
          progress: bool = True, echo: Callable[[str], None] = print, jobs: int = 1,
          name: str | None = None, executor: Executor | None = None, feature_shards: int = 1) -> Path:
    """Every point x seed, one MLflow parent run for the sweep (each run nested in it), rows to ``out_csv``.

    ``executor`` (default: local with ``jobs`` processes) runs the points x seeds not already finished (same
    config hash in their run folder), after the feature caches every point needs (made first, so that the points
    only read them; on Slurm, as jobs, ``feature_shards`` shards each). Locally, ``jobs`` > 1 trains that many
    points at once in worker processes, each evaluating with cores / jobs threads; on Slurm, the points are one job
    array, ``executor.jobs`` tasks at once, each evaluating with its CPUs. Training always runs on
    run.train_threads, so the numbers depend on neither. Every point x seed writes its own run folder.
    """
    import pandas as pd

    from bench import tracking
    from bench.runs import run_dir

    executor = executor or Executor("local", jobs)
    name = name or "+".join(axes)
    method = axes_method(axes)
    points = grid(axes, cfg)
    own = default_point(axes, cfg)
    configs = [point_config(cfg, p, runs_dir, name) for p in points]  # every point validated before anything runs
    cluster.warn_about_tracking(executor, cfg.run.tracking_uri)
    runs = [(point, c, seed) for point, c in zip(points, configs) for seed in seeds]
    results: dict[int, dict] = {i: m for i, (_, c, seed) in enumerate(runs) if (m := finished(c, method, seed))}
    todo = [i for i in range(len(runs)) if i not in results]
    if results:
        echo(f"{name}: {len(results)} of {len(runs)} runs already done (same config), {len(todo)} to run")
    parent = tracking.parent_run(cfg, f"ablate-{cfg.data.dataset}-{name}",
                                 {"axes": json.dumps({k: [_text(v) for v in vs] for k, vs in axes.items()}),
                                  "seeds": ",".join(map(str, seeds)), "points": len(points)})
    with parent if todo else contextlib.nullcontext(None) as parent_id:  # nothing to run: nothing logged
        needed = {_feature_key(runs[i][1]): runs[i][1] for i in todo}.values()
        cluster.extract_features(executor, [(c, split) for c in needed for split in _splits(c)], feature_shards,
                                 progress, echo)
        tasks = [cluster.Task(run_point, (c, seed, progress and executor.kind == "local" and executor.jobs <= 1, method),
                              f"{point.label} seed {seed}", (c.data.dataset,))
                 for point, c, seed in (runs[i] for i in todo)]
        results.update(zip(todo, cluster.run_tasks(executor, tasks, f"ablate-{name}", parent_id, echo)))
        rows = []
        for i, (point, point_cfg, seed) in enumerate(runs):
            m = results[i]
            steps = point_cfg.acseg.train.steps if method == "acseg" else getattr(point_cfg, method).steps
            rows.append({**{c: m.get(c) for c in ROW_COLUMNS}, "axis": point.axis, "value": point.value,
                         "default": point == own, "seed": seed, "train_steps": steps, "run": str(run_dir(point_cfg, method, seed)),
                         **_training(point_cfg, seed, method)})
            echo(f"{point.label} seed {seed}: mIoU {m['miou']:.2f}  acc {m['acc']:.2f}")
    df = pd.DataFrame(rows)[ROW_COLUMNS].round({"miou": 2, "acc": 2, "concepts_per_image_mean": 2,
                                                 "final_loss": 4, "steps_per_second": 2})
    write_csv_atomic(out_csv, df)
    return Path(out_csv)


def _feature_key(cfg: Config) -> str:
    return cfg.hash("data", "backbone", "features")


def run_sweeps(cfg: Config, names: list[str], progress: bool = True, echo: Callable[[str], None] = print,
               jobs: int | None = None, executor: Executor | None = None, feature_shards: int = 1) -> list[Path]:
    """The sweeps of the params' ``ablations.sweeps`` (all if ``names`` is empty) on ``ablations.dataset``, at the
    ablations' budget: one CSV per sweep in ``ablations.csv_dir``."""
    plan = cfg.ablations
    unknown = [n for n in names if n not in plan.sweeps and n != DEFAULT]
    if unknown:
        raise ConfigError(f"unknown sweep(s) {unknown}; ablations.sweeps has {sorted(plan.sweeps)} (and "
                          f"{DEFAULT!r}, the shared default point)")
    base = budget(cfg)
    outs = []
    for name in names or [DEFAULT, *plan.sweeps]:
        axes = parse_axes(plan.sweeps[name]) if name != DEFAULT else {"prototypes": [base.acseg.prototypes]}
        outs.append(sweep(base, axes, cfg.benchmark.seeds, plan.runs_dir, Path(plan.csv_dir) / f"{name}.csv",
                          progress, echo, jobs or plan.jobs, name, executor, feature_shards))
    return outs


def collect_ablations(cfg: Config) -> Path:
    """Every sweep's CSV (not the default point's own) into ``ablations.out_csv``: one tidy row per run."""
    import pandas as pd

    plan = cfg.ablations
    missing = [n for n in plan.sweeps if not (Path(plan.csv_dir) / f"{n}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"no results for sweep(s) {missing} in {plan.csv_dir}: run `acseg-bench ablate "
                                f"--sweep NAME` (or `dvc repro`) first")
    df = pd.concat([pd.read_csv(Path(plan.csv_dir) / f"{n}.csv") for n in plan.sweeps], ignore_index=True)
    write_csv_atomic(plan.out_csv, df)
    return Path(plan.out_csv)


def _training(cfg: Config, seed: int, method: str = "acseg") -> dict:
    from bench.runs import run_dir

    path = run_dir(cfg, method, seed) / "train_summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {k: summary.get(k) for k in ("final_loss", "steps_per_second", "torch_threads")}
