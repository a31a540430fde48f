"""Studies: named sets of whole configurations run side by side, each point a method with its own overrides.

A study is a sweep file (``studies/sweeps/<name>.yaml``)::

    datasets: [camvid, stanford_background]
    seeds: [0, 1, 2, 3, 4]        # default: benchmark.seeds
    reference: kmeans             # the point every other is compared with (Welch's test)
    set: {acseg.arithmetic: native}  # overrides of every point
    points:
      kmeans: {method: kmeans}
      acseg_k20: {method: acseg, set: {acseg.prototypes: 20}}

It runs through the same steps as an ablation sweep (:func:`bench.ablate.run_point`: train, evaluate, a run reused
when its folder holds metrics of exactly its config), into ``runs/studies/<name>/<point>/``; a run of the benchmark
with the same config hash (``run.runs_dir``) is reused as it is. Its rows go to ``<out_dir>/<name>.csv``, with each
point's mean +- std, 95 % CI and Welch p against the reference in ``<name>.md`` and every seed in ``<name>.png``
(``out_dir``: reports/variants by default).
`dvc exp run -S 'studies=[NAME]'` runs it as the DVC stage ``study@NAME``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench import cluster, tracking
from bench.ablate import finished, run_point
from bench.cluster import Executor
from bench.config import Config, ConfigError, with_overrides
from bench.data import write_csv_atomic, write_text_atomic
from bench.figures import pyplot
from bench.methods import METHODS
from bench.stats import format_ci, format_p, format_summary, summarise, welch

__all__ = ["Study", "StudyPoint", "read_study", "run_study"]


class StudyPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    set: dict[str, Any] = Field(default_factory=dict, description="section.field -> value over the study's base")


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    datasets: list[str] = Field(min_length=1)
    seeds: list[int] | None = None
    reference: str
    set: dict[str, Any] = Field(default_factory=dict)
    points: dict[str, StudyPoint] = Field(min_length=1)


# One row per run (a study is a "set" of "variants", as its tables name them).
ROW_COLUMNS = ["set", "dataset", "variant", "method", "overrides", "seed", "miou", "acc", "clusters_used",
               "concepts_per_image_mean", "config_hash"]


def read_study(path: str | Path) -> Study:
    """A sweep file, validated: its points' methods registered, its reference one of its points."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist (the studies are studies/sweeps/*.yaml)")
    try:
        study = Study.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    unknown = [p for p, point in study.points.items() if point.method not in METHODS]
    if unknown:
        raise ConfigError(f"{path}: point {unknown[0]!r}: unknown method {study.points[unknown[0]].method!r}; known: "
                          f"{sorted(METHODS)}")
    if study.reference not in study.points:
        raise ConfigError(f"{path}: reference {study.reference!r} is not one of its points {sorted(study.points)}")
    if any("acseg.arithmetic" in point.set for point in study.points.values()):
        raise ConfigError(f"{path}: acseg.arithmetic is set for a whole study (its `set`), never per point: the "
                          "arithmetic is fixed when the process starts")
    return study


def point_configs(study: Study, name: str, base: Config, runs_dir: str | Path) -> dict[str, Config]:
    """Each point's configuration over a dataset's base, in ``runs_dir``/<study>/<point>."""
    configs = {}
    for point, spec in study.points.items():
        try:
            configs[point] = with_overrides(base, {**spec.set, "run.runs_dir": str(Path(runs_dir) / name / point)})
        except ConfigError as e:
            raise ConfigError(f"study {name}, point {point}: {e}") from None
    return configs


def run_study(path: str | Path, bases: dict[str, Config], out_dir: str | Path, runs_dir: str | Path,
              progress: bool = True, echo: Callable[[str], None] = print, executor: Executor | None = None) -> Path:
    """Every point x seed of the study on each dataset (``bases``: dataset -> its configuration with the study's
    ``set``), the rows to ``<out_dir>/<name>.csv`` and the comparison with the reference beside it."""
    study, name = read_study(path), Path(path).stem
    executor = executor or Executor("local", 1)
    runs, results = [], {}
    for dataset in study.datasets:
        base = bases[dataset]
        seeds = study.seeds or base.benchmark.seeds
        for point, cfg in point_configs(study, name, base, runs_dir).items():
            method = study.points[point].method
            for seed in seeds:
                i = len(runs)
                runs.append((dataset, point, method, cfg, seed))
                benchmark = with_overrides(cfg, {"run.runs_dir": base.run.runs_dir})
                if (metrics := finished(benchmark, method, seed)) is not None:
                    results[i] = metrics
                elif (metrics := finished(cfg, method, seed)) is not None:
                    results[i] = metrics
    todo = [i for i in range(len(runs)) if i not in results]
    echo(f"study {name}: {len(runs) - len(todo)} of {len(runs)} runs already done (same config), {len(todo)} to run")
    first = bases[study.datasets[0]]
    cluster.warn_about_tracking(executor, first.run.tracking_uri)
    parent = tracking.parent_run(first, f"study-{name}", {"study": name, "points": len(study.points),
                                                           "datasets": ",".join(study.datasets)})
    with parent as parent_id:
        tasks = [cluster.Task(run_point, (cfg, seed, progress and executor.kind == "local", method),
                              f"{dataset} {point} seed {seed}", (dataset,))
                 for dataset, point, method, cfg, seed in (runs[i] for i in todo)]
        for i, metrics in zip(todo, cluster.run_tasks(executor, tasks, f"study-{name}", parent_id, echo)):
            results[i] = metrics
    rows = []
    for i, (dataset, point, method, _, seed) in enumerate(runs):
        metrics = results[i]
        overrides = {**study.set, **study.points[point].set}
        rows.append({"set": name, "dataset": dataset, "variant": point, "method": method,
                     "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()), "seed": seed,
                     "miou": round(metrics["miou"], 2), "acc": round(metrics["acc"], 2),
                     "clusters_used": metrics.get("clusters_used"),
                     "concepts_per_image_mean": metrics.get("concepts_per_image_mean"),
                     "config_hash": metrics["config_hash"]})
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    out = Path(out_dir) / f"{name}.csv"
    write_csv_atomic(out, df)
    write_text_atomic(out.with_suffix(".md"), "\n".join(comparison_lines(df, study.reference, name)) + "\n")
    figure(df, out.with_suffix(".png"), name)
    return out


def comparison_lines(df: pd.DataFrame, reference: str, name: str) -> list[str]:
    """Per dataset, each point's mIoU mean +- std over seeds, its 95 % CI, and Welch's p against the reference."""
    lines = [f"# Study {name}", "", f"mIoU (%) per point, mean +- std over seeds; p: Welch's t-test against "
             f"`{reference}`. Rows: `{name}.csv`.", ""]
    for dataset, rows in df.groupby("dataset", sort=False):
        ref = rows[rows.variant == reference].miou.tolist()
        lines += [f"## {dataset}", "", "| point | method | mIoU (%) | 95% CI | difference | p |", "| --- | --- | --- | --- | --- | --- |"]
        for point, own in rows.groupby("variant", sort=False):
            s, c = summarise(own.miou.tolist()), welch(own.miou.tolist(), ref)
            diff = "" if point == reference or math.isnan(c.difference) else f"{c.difference:+.2f}"
            p = "" if point == reference else format_p(c.p_value)
            lines.append(f"| {point} | {own.method.iloc[0]} | {format_summary(s)} | {format_ci(s)} | {diff} | {p} |")
        lines.append("")
    return lines


def figure(df: pd.DataFrame, path: Path, name: str) -> Path:
    """Every seed's mIoU per point, one panel per dataset."""
    import seaborn as sns  # heavy: imported when a figure is drawn

    datasets = list(df.dataset.unique())
    fig, axes = pyplot().subplots(1, len(datasets), figsize=(2 + 0.6 * df.variant.nunique() * len(datasets), 3.8),
                                  squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = df[df.dataset == dataset]
        sns.stripplot(data=rows, x="variant", y="miou", hue="method", ax=ax, size=5, jitter=0.1)
        ax.set_title(f"{name}: {dataset}")
        ax.set_xlabel("")
        ax.set_ylabel("mIoU (%), one dot per seed")
        ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
