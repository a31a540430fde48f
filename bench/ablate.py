"""Sweeps: which of a method's choices matter. An axis is a dotted config key (``acseg.prototypes``) or one of a few
short aliases (:data:`ALIASES`); several axes are their grid; every point x seed is trained and evaluated.

Every point of a sweep is an ordinary configuration (the base config with the axis' parameters changed): it is
trained and evaluated by the same steps as the main pipeline (bench/runs.py) into its own run folder, and reuses
the feature cache of every run that shares its backbone, weights, feature type and resolution. A point whose
folder already holds metrics for exactly its config (same config hash) is not recomputed, so sweeps that share
points (every axis passes through the defaults) cost each point once.

An axis is the CLI option ``--<name>`` (``--prototypes 5,10,20``, ``--acseg.graph.k 5,13``) and a key of a sweep in
the params' ``ablations.sweeps``, which `dvc repro` runs. Named sets of whole configurations (a study: each point a
method with its own overrides) run through the same steps: :mod:`bench.studies`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError

from bench import cluster, tracking
from bench.backbones import BACKBONES
from bench.cluster import Executor
from bench.config import Config, ConfigError, with_overrides
from bench.data import write_csv_atomic
from bench.methods import METHODS, get_method
from bench.runs import run_evaluate, run_features, run_train
from bench.schema import schema
from bench.store import model_path, run_dir, stale_evaluation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Axis:
    """A swept choice: one dotted config key (``acseg.prototypes``), or a compound choice that sets several keys
    (the backbone with its weights, the classifier's input, STEGO's calibration rule)."""

    name: str  # how the CLI (``--<name>``), the params and the tables name it
    title: str  # how the report names it
    key: str = ""  # the dotted key it sets (a plain axis)
    parse: Callable[[str], Any] | None = None  # compound axes: text -> value
    overrides: Callable[[Any, Config], dict[str, Any]] | None = None  # compound axes: value -> {key: value}
    current: Callable[[Config], Any] | None = None  # compound axes: the base configuration's value
    method: str = ""  # the method whose choice it varies ("": the key's section if it is a method's, else
    #                   ablations.method)

    def value_of(self, cfg: Config) -> Any:
        return self.current(cfg) if self.current else _get(cfg, self.key)

    def changes(self, value: Any, cfg: Config) -> dict[str, Any]:
        return self.overrides(value, cfg) if self.overrides else {self.key: value}

    def read(self, text: str) -> Any:
        return self.parse(text) if self.parse else parse_value(self.name, self.key, text)

    def method_of(self, cfg: Config | None) -> str:
        """The method its points train: its own, its key's section if that is a method's, else the sweeps' default
        method (``ablations.method``; "" when no configuration says it)."""
        section = self.key.split(".")[0]
        return self.method or (section if section in METHODS else cfg.ablations.method if cfg else "")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def field_at(dotted: str) -> Any:
    """The schema's field at a dotted key (None if there is none)."""
    model: Any = schema()
    info = None
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info


def parse_value(name: str, key: str, text: str) -> Any:
    """A value of the field at ``key`` from its text (a CLI comma list item or a params value), typed as the schema
    types it; the field's own ranges are checked when the point's configuration is validated."""
    info = field_at(key)
    if info is None:
        raise ConfigError(f"unknown ablation axis {name!r}: not an alias ({sorted(ALIASES)}) nor a parameter of the "
                          "configuration (section.field)")
    option, kind = f"--{name.replace('_', '-')}", info.annotation
    if kind is bool:
        if text.lower() in ("on", "true", "yes", "1"):
            return True
        if text.lower() in ("off", "false", "no", "0"):
            return False
        raise ConfigError(f"{option}: {text!r} is not on/off")
    if get_origin(kind) is Literal:
        if text not in get_args(kind):
            raise ConfigError(f"{option}: unknown value {text!r}; choose from {sorted(get_args(kind))}")
        return text
    value = None if text.lower() in ("null", "none") else yaml.safe_load(text)
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as e:
        what = {int: "an integer", float: "a number"}.get(kind, f"a valid {key}")
        raise ConfigError(f"{option}: {text!r} is not {what} ({e.errors()[0]['msg']})") from None


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


def _backbone_name(text: str) -> str:
    choices = [*BACKBONES, "random"]
    if text not in choices:
        raise ConfigError(f"--backbone: unknown value {text!r}; choose from {sorted(choices)}")
    return text


CLASSIFIER_INPUTS = ["region_mean", "region_mean_centred", "crops"]


def _classifier(value: str, cfg: Config) -> dict[str, Any]:
    """What the concept classifier clusters: region means (of the raw or the centred features), or crops."""
    if value == "crops":
        return {"acseg.classifier.regions": "crops"}
    return {"acseg.classifier.regions": "mean", "acseg.classifier.raw_regions": value == "region_mean"}


def _classifier_input(text: str) -> str:
    if text not in CLASSIFIER_INPUTS:
        raise ConfigError(f"--classifier: unknown value {text!r}; choose from {sorted(CLASSIFIER_INPUTS)}")
    return text


def _classifier_value(cfg: Config) -> str:
    c = cfg.acseg.classifier
    return "crops" if c.regions == "crops" else "region_mean" if c.raw_regions else "region_mean_centred"


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


# Short names of the axes the tables use: a plain one is a dotted key; the compound ones set several keys.
ALIASES: dict[str, Axis] = {a.name: a for a in [
    Axis("prototypes", "number of prototypes k", "acseg.prototypes"),
    Axis("loss", "loss (the modularity loss or a variant)", "acseg.loss"),
    Axis("depth", "ACG depth N", "acseg.depth"),
    Axis("self_attention", "prototype self-attention (on/off)", "acseg.self_attention"),
    Axis("feature", "backbone features (tokens or attention keys)", "features.type"),
    Axis("classes", "classifier K (0: the dataset's classes)", "acseg.classifier.n_classes"),
    Axis("restarts", "concept classifier's k-means restarts (the lowest inertia wins)", "acseg.classifier.n_init"),
    Axis("graph", "the loss's pixel graph (dense, k-NN, thresholded)", "acseg.graph.kind"),
    Axis("graph_features", "what the graph compares (tokens, keys or both)", "acseg.graph.features"),
    Axis("region_features", "what the concept classifier reads of a region (tokens, keys or both)",
         "acseg.classifier.region_features"),
    Axis("backbone", "backbone (a registered one with hub weights, or `random`: the control)",
         parse=_backbone_name, overrides=_backbone,
         current=lambda c: "random" if c.backbone.weights == "random" else c.backbone.name),
    Axis("classifier", "concept classifier input (raw or centred region means, or re-encoded crops)",
         parse=_classifier_input, overrides=_classifier, current=_classifier_value, method="acseg"),
    Axis("stego_rule", "STEGO's calibration rule: % of self / k-NN / random pairs that repel", parse=_repel,
         overrides=lambda v, c: {"stego.repel_self": v[0], "stego.repel_knn": v[1], "stego.repel_rand": v[2]},
         current=lambda c: _repel(_rule_text(c)), method="stego"),
]}


def axis(name: str) -> Axis:
    """An alias, or any dotted key of the configuration (its name is the key)."""
    if name in ALIASES:
        return ALIASES[name]
    info = field_at(name) if "." in name else None
    if info is None:
        raise ConfigError(f"unknown ablation axis {name!r}; aliases: {sorted(ALIASES)}, or any parameter as "
                          "section.field")
    return Axis(name, info.description or name, name)


def axes_method(axes, cfg: Config | None = None) -> str:
    """The one method a sweep's axes vary (a sweep cannot mix methods)."""
    methods = {axis(a).method_of(cfg) for a in axes} - {""}
    if len(methods) > 1:
        raise ConfigError(f"a sweep varies one method; axes {sorted(axes)} belong to {sorted(methods)}")
    if not methods and cfg is None:
        raise ConfigError(f"axes {sorted(axes)} name no method: ablations.method says which one they train")
    return methods.pop() if methods else cfg.ablations.method


def axis_title(name: str) -> str:
    """A sweep's title: its axes' titles joined (``depth+self_attention``)."""
    titles = []
    for a in name.split("+"):
        try:
            titles.append(axis(a).title)
        except ConfigError:
            titles.append(a)
    return " + ".join(titles)


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
        swept = axis(name)
        items = [v.strip() for v in values.split(",")] if isinstance(values, str) else [_text(v) for v in values]
        if not all(items):
            raise ConfigError(f"--{name}: empty value in {values!r}")
        axes[name] = [swept.read(v) for v in items]
    if not axes:
        raise ConfigError("nothing to sweep: give at least one axis, e.g. --prototypes 5,10,20 (aliases: "
                          f"{sorted(ALIASES)}, or any parameter as --section.field)")
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
    return Point(tuple(axes), tuple(axis(a).value_of(base) for a in axes))


DEFAULT = "default"


def point_config(cfg: Config, point: Point, runs_dir: str | Path, sweep_name: str) -> Config:
    """The point's configuration: the base with the axis' parameters changed, in ``runs_dir``/``sweep_name``/
    <label>; a point of the sweeps' method (ablations.method) that changes nothing is the shared default point, in
    ``runs_dir``/default."""
    overrides: dict[str, Any] = {}
    for name, value in zip(point.axes, point.values):
        overrides.update(axis(name).changes(value, cfg))
    try:
        changed = with_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"ablation point {point.label}: {e}") from None
    shared = changed.to_dict() == cfg.to_dict() and axes_method(point.axes, cfg) == cfg.ablations.method
    folder = DEFAULT if shared else f"{sweep_name}/{point.label}"
    return with_overrides(changed, {"run.runs_dir": str(Path(runs_dir) / folder)})


def budget(cfg: Config) -> Config:
    """The base configuration of the ablations: the params with the ablations' training budget (the steps of
    ablations.method, where it trains by steps)."""
    key = get_method(cfg.ablations.method).steps_key
    return with_overrides(cfg, {key: cfg.ablations.train_steps}) if key else cfg


def _own_point(plan, base: Config) -> dict[str, list[Any]]:
    """The shared default point as a one-point sweep: the first axis of the first sweep at its base value."""
    first = next(iter(next(iter(plan.sweeps.values()), {"prototypes": []})))
    return {first: [axis(first).value_of(base)]}


ROW_COLUMNS = ["dataset", "split", "method", "axis", "value", "default", "seed", "miou", "acc", "concepts_per_image_mean",
               "final_loss", "steps_per_second", "torch_threads", "train_steps", "backbone", "weights",
               "feature_type", "resolution", "crf", "config_hash", "run"]


def run_point(cfg: Config, seed: int, progress: bool, method: str) -> dict:
    """Train and evaluate a method at one point and seed (features extracted once if missing); reuse earlier metrics
    of exactly this config."""
    metrics = finished(cfg, method, seed)
    if metrics is not None:
        return metrics
    for split in _splits(cfg):
        run_features(cfg, split, progress=progress)
    run_train(cfg, method, seed, progress=progress)
    return run_evaluate(cfg, method, seed, progress=progress)


def finished(cfg: Config, method: str, seed: int) -> dict | None:
    """The metrics of a run evaluated with exactly this config (same config hash, same recorded options) from the
    model beside them, or None."""
    metrics_path = run_dir(cfg, method, seed) / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if (metrics.get("config_hash") == cfg.hash() and get_method(method).reusable(cfg, metrics)
                and stale_evaluation(metrics, model_path(cfg, method, seed)) is None):
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
    executor = executor or Executor("local", jobs)
    name = name or "+".join(axes)
    method = axes_method(axes, cfg)
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
            key = get_method(method).steps_key
            steps = _get(point_cfg, key) if key else None
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
        axes = parse_axes(plan.sweeps[name]) if name != DEFAULT else _own_point(plan, base)
        outs.append(sweep(base, axes, cfg.benchmark.seeds, plan.runs_dir, Path(plan.csv_dir) / f"{name}.csv",
                          progress, echo, jobs or plan.jobs, name, executor, feature_shards))
    return outs


def collect_ablations(cfg: Config) -> Path:
    """Every sweep's CSV (not the default point's own) into ``ablations.out_csv``: one tidy row per run."""
    plan = cfg.ablations
    missing = [n for n in plan.sweeps if not (Path(plan.csv_dir) / f"{n}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"no results for sweep(s) {missing} in {plan.csv_dir}: run `acseg-bench ablate "
                                f"--sweep NAME` (or `dvc repro`) first")
    df = pd.concat([pd.read_csv(Path(plan.csv_dir) / f"{n}.csv") for n in plan.sweeps], ignore_index=True)
    write_csv_atomic(plan.out_csv, df)
    return Path(plan.out_csv)


def _training(cfg: Config, seed: int, method: str) -> dict:
    path = run_dir(cfg, method, seed) / "train_summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {k: summary.get(k) for k in ("final_loss", "steps_per_second", "torch_threads")}
