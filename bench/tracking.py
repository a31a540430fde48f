"""MLflow tracking. Every train and evaluate run is logged once its outputs are safely on disk, so a tracking
server that is down costs a warning, never a result (the DVC outputs hold everything)."""

from __future__ import annotations

import logging
import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bench import arithmetic
from bench.config import Config, mlflow_defaults

log = logging.getLogger(__name__)


# What a result depends on. The pipeline's own outputs (runs/, reports/, dvc.lock) change while it runs, so they
# do not make a commit "dirty".
SOURCES = ["acseg", "bench", "conf", "params.yaml", "dvc.yaml", "pyproject.toml"]


def git_commit() -> str:
    """HEAD's commit, with "-dirty" when the code or params differ from it; "unknown" outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCES],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def standard_tags(cfg: Config, split: str, seed: int, weights_sha256: str, method: str) -> dict[str, str]:
    # cpu, arithmetic: ACSeg's training amplifies float-rounding differences, so with native arithmetic the same
    # config and seed reproduce a number bit for bit only on the same kind of processor; pinned arithmetic
    # (acseg.arithmetic, bench/arithmetic.py) makes the kernels, not the processor, decide the rounding.
    return {
        "git_commit": git_commit(),
        "method": method,
        "backbone": cfg.backbone.name,
        "weights_sha256": weights_sha256,
        "weights_label": cfg.backbone.weights_label,
        "dataset": cfg.data.dataset,
        "split": split,
        "seed": str(seed),
        "config_hash": cfg.hash(),
        "cpu": cpu_name(),
        "arithmetic": arithmetic.describe(),
    }


# A sweep's worker process nests its runs under the sweep's parent run (set by the worker's initializer): process
# state, not configuration.
_parent_run_id: str | None = None


def nest_under(run_id: str | None) -> None:
    """Runs logged by this process from now on are nested under ``run_id`` (a sweep's parent, in a worker)."""
    global _parent_run_id
    _parent_run_id = run_id


def _use(cfg: Config):
    """mlflow, pointed at the config's store and experiment. Several processes or nodes may create the experiment
    at once (a sweep's tasks on a tracking server): the loser of that race reads the winner's."""
    mlflow_defaults()
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(cfg.run.tracking_uri)
    try:
        mlflow.set_experiment(cfg.run.experiment)
    except MlflowException:
        if mlflow.get_experiment_by_name(cfg.run.experiment) is None:
            raise
        mlflow.set_experiment(cfg.run.experiment)
    return mlflow


def ensure_experiment(cfg: Config) -> None:
    """Create the config's MLflow experiment now (before jobs on other nodes log to it); a store that cannot be
    reached costs a warning."""
    if not cfg.run.track:
        return
    try:
        _use(cfg)
    except Exception as e:  # noqa: BLE001 (tracking must never cost a result)
        log.warning("MLflow store %s: %s: %s", cfg.run.tracking_uri, type(e).__name__, e)


def log_run(
    cfg: Config,
    run_name: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    series: dict[str, list[tuple[int, float]]] | None = None,
    artifacts: list[Path] | None = None,
    params: dict[str, Any] | None = None,
) -> str | None:
    """One MLflow run with params (the whole config), metrics, step series, tags and files. Returns its id (None
    with ``run.track: false``, or when the store fails)."""
    if not cfg.run.track:
        return None
    try:
        mlflow = _use(cfg)
        nested = mlflow.active_run() is not None
        if not nested and _parent_run_id:  # a sweep's worker process: nest under the sweep's run
            tags = {**tags, "mlflow.parentRunId": _parent_run_id}
        with mlflow.start_run(run_name=run_name, nested=nested) as run:
            mlflow.set_tags(tags)
            flat = {k: ("null" if v is None else v) for k, v in (params or cfg.flat()).items()}
            mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            for name, points in (series or {}).items():
                for step, value in points:
                    mlflow.log_metric(name, float(value), step=int(step))
            for path in artifacts or []:
                if Path(path).exists():
                    mlflow.log_artifact(str(path))
            return run.info.run_id
    except Exception as e:  # noqa: BLE001 (tracking must never cost a result)
        log.warning("MLflow logging to %s failed (%s: %s); the results are in the run folder regardless",
                    cfg.run.tracking_uri, type(e).__name__, e)
        return None


@contextmanager
def parent_run(cfg: Config, run_name: str, params: dict[str, Any]) -> Iterator[str | None]:
    """An MLflow parent run (a sweep): every run logged inside the block is nested in it. If MLflow is
    unavailable the block still runs (its results are on disk regardless)."""
    if not cfg.run.track:
        yield None
        return
    run = None
    try:
        mlflow = _use(cfg)
        run = mlflow.start_run(run_name=run_name)
        mlflow.set_tags({"git_commit": git_commit(), "kind": "sweep", "dataset": cfg.data.dataset,
                         "backbone": cfg.backbone.name, "config_hash": cfg.hash()})
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
    except Exception as e:  # noqa: BLE001 (tracking must never cost a result)
        log.warning("MLflow parent run at %s failed (%s: %s); runs are logged unnested", cfg.run.tracking_uri,
                    type(e).__name__, e)
    try:
        yield run.info.run_id if run is not None else None
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run()
