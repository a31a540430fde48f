"""Ablation sweeps: which of ACSeg's choices matter. A registry of named axes, their grid, and the runs.

Every point of a sweep is an ordinary configuration (the base config with the axis' parameters changed): it is
trained and evaluated by the same steps as the main pipeline (bench/runs.py) into its own run folder, and
reuses the feature cache of every run that shares its backbone, weights, feature type and resolution. A point
whose folder already holds metrics for exactly its config (same config hash) is not recomputed, so sweeps that
share points (every axis passes through the defaults) cost each point once.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.config import Config, ConfigError, with_overrides

log = logging.getLogger(__name__)


def _int(axis: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{axis}: {text!r} is not an integer") from None

    return parse


def _choice(axis: str, choices: Callable[[], list[str]]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices():
            raise ConfigError(f"--{axis}: unknown value {text!r}; choose from {sorted(choices())}")
        return text

    return parse


def _switch(axis: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text.lower() in ("on", "true", "yes", "1"):
            return True
        if text.lower() in ("off", "false", "no", "0"):
            return False
        raise ConfigError(f"--{axis}: {text!r} is not on/off")

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


@dataclass(frozen=True)
class Axis:
    name: str
    help: str
    parse: Callable[[str], Any]
    overrides: Callable[[Any, Config], dict[str, Any]]


AXES: dict[str, Axis] = {a.name: a for a in [
    Axis("prototypes", "number of prototypes k", _int("prototypes"), lambda v, c: {"acseg.prototypes": v}),
    Axis("loss", "the modularity loss or a variant of docs/method.md", _choice("loss", _losses),
         lambda v, c: {"acseg.loss": v}),
    Axis("depth", "N decoder blocks of the concept generator", _int("depth"), lambda v, c: {"acseg.depth": v}),
    Axis("self_attention", "prototype self-attention in every block (on/off)", _switch("self_attention"),
         lambda v, c: {"acseg.self_attention": v}),
    Axis("feature", "backbone features: tokens or attention keys", _choice("feature", _feature_types),
         lambda v, c: {"features.type": v}),
    Axis("backbone", "a registered backbone (hub weights) or `random` (random weights, the control)",
         _choice("backbone", _backbones), _backbone),
    Axis("classifier", "concept classifier input: raw or centred region means",
         _choice("classifier", lambda: ["region_mean", "region_mean_centred"]),
         lambda v, c: {"classifier.raw_regions": v == "region_mean"}),
    Axis("classes", "K, the clusters of the concept classifier (0: the dataset's classes)", _int("classes"),
         lambda v, c: {"classifier.n_classes": v}),
]}


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
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def parse_axes(raw: dict[str, str | list[Any] | None]) -> dict[str, list[Any]]:
    """{axis: "5,10,20" or a list} -> {axis: parsed values}; unknown axes and values are clear errors."""
    axes = {}
    for name, values in raw.items():
        if values is None or values == "" or values == []:
            continue
        if name not in AXES:
            raise ConfigError(f"unknown ablation axis {name!r}; axes: {sorted(AXES)}")
        items = [v.strip() for v in values.split(",")] if isinstance(values, str) else [str(v) for v in values]
        if not all(items):
            raise ConfigError(f"--{name}: empty value in {values!r}")
        axes[name] = [AXES[name].parse(v) for v in items]
    if not axes:
        raise ConfigError(f"nothing to sweep: give at least one axis, e.g. --prototypes 5,10,20 (axes: {sorted(AXES)})")
    return axes


def grid(axes: dict[str, list[Any]]) -> list[Point]:
    """Several axes at once = their grid (every combination), in the order given."""
    names = tuple(axes)
    return [Point(names, combo) for combo in itertools.product(*axes.values())]


def point_config(cfg: Config, point: Point, runs_dir: str) -> Config:
    overrides: dict[str, Any] = {}
    for name, value in zip(point.axes, point.values):
        overrides.update(AXES[name].overrides(value, cfg))
    overrides["run.runs_dir"] = str(Path(runs_dir) / point.label)
    try:
        return with_overrides(cfg, **{k.replace(".", "__"): v for k, v in overrides.items()})
    except ConfigError as e:
        raise ConfigError(f"ablation point {point.label}: {e}") from None


ROW_COLUMNS = ["dataset", "split", "axis", "value", "seed", "miou", "acc", "concepts_per_image_mean",
               "final_loss", "steps_per_second", "backbone", "weights", "feature_type", "resolution", "crf",
               "config_hash", "run"]


def run_point(cfg: Config, seed: int, progress: bool = True) -> dict:
    """Train and evaluate ACSeg at one point and seed (features extracted once if missing); reuse earlier
    metrics of exactly this config."""
    from bench.runs import run_dir, run_evaluate, run_features, run_train

    metrics_path = run_dir(cfg, "acseg", seed) / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("config_hash") == cfg.hash():
            log.info("reusing %s (same config)", metrics_path)
            return metrics
    for split in sorted({cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split}):
        run_features(cfg, split, progress=progress)
    run_train(cfg, seed, progress=progress)
    return run_evaluate(cfg, "acseg", seed, progress=progress)


def sweep(cfg: Config, axes: dict[str, list[Any]], seeds: list[int], runs_dir: str, out_csv: str | Path,
          progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """Every point x seed, one MLflow parent run for the sweep (each run nested in it), rows to ``out_csv``."""
    import pandas as pd

    from bench import tracking

    points = grid(axes)
    configs = [point_config(cfg, p, runs_dir) for p in points]  # every point validated before anything runs
    rows = []
    with tracking.parent_run(cfg, f"ablate-{'+'.join(axes)}",
                             {"axes": json.dumps({k: [_text(v) for v in vs] for k, vs in axes.items()}),
                              "seeds": ",".join(map(str, seeds)), "points": len(points)}):
        for point, point_cfg in zip(points, configs):
            for seed in seeds:
                m = run_point(point_cfg, seed, progress)
                rows.append({**{c: m.get(c) for c in ROW_COLUMNS}, "axis": point.axis, "value": point.value,
                             "seed": seed, "run": str(Path(point_cfg.run.runs_dir) / "acseg" / f"seed{seed}"),
                             **_training(point_cfg, seed)})
                echo(f"{point.label} seed {seed}: mIoU {m['miou']:.2f}  acc {m['acc']:.2f}")
    df = pd.DataFrame(rows)[ROW_COLUMNS].round({"miou": 2, "acc": 2, "concepts_per_image_mean": 2,
                                                 "final_loss": 4, "steps_per_second": 2})
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    return out


def _training(cfg: Config, seed: int) -> dict:
    from bench.runs import run_dir

    path = run_dir(cfg, "acseg", seed) / "train_summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {k: summary.get(k) for k in ("final_loss", "steps_per_second")}
