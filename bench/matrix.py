"""The benchmark's runs (dataset x method x seed: what dvc.yaml's ``train`` and ``evaluate`` stages run, one stage
each) on an executor (bench/cluster.py): here, or on Slurm as one job array. ``acseg-bench benchmark``.

Each run is the pipeline's own steps (:func:`bench.runs.run_train`, then :func:`bench.runs.run_evaluate`) in its
usual run folder, so its outputs are those of the DVC stages; a run whose folder already holds metrics of exactly
its config (same config hash) is reused, not submitted. The feature caches the runs read are made first (on Slurm,
as jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bench import cluster, tracking
from bench.ablate import finished
from bench.cluster import Executor
from bench.config import Config
from bench.runs import run_evaluate, run_train


@dataclass(frozen=True)
class Run:
    cfg: Config
    method: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.cfg.data.dataset} {self.method} seed {self.seed}"


def run_one(cfg: Config, method: str, seed: int, progress: bool = False) -> dict:
    """Train and evaluate one method and seed (without the CRF); reuse the metrics of exactly this config."""
    metrics = finished(cfg, method, seed)
    if metrics is not None:
        return metrics
    run_train(cfg, method, seed, progress=progress)
    return run_evaluate(cfg, method, seed, progress=progress)


def run_matrix(configs: list[Config], methods: list[str], seeds: list[int], executor: Executor,
               feature_shards: int = 1, progress: bool = True,
               echo: Callable[[str], None] = print) -> list[tuple[Run, dict]]:
    """Every (dataset's config) x method x seed, trained and evaluated by ``executor``: [(run, metrics)]."""
    runs = [Run(cfg, m, s) for cfg in configs for m in methods for s in seeds]
    results = {i: m for i, r in enumerate(runs) if (m := finished(r.cfg, r.method, r.seed)) is not None}
    todo = [i for i in range(len(runs)) if i not in results]
    echo(f"benchmark: {len(runs)} runs, {len(results)} already done (same config), {len(todo)} to run")
    if todo:
        for cfg in configs:
            cluster.warn_about_tracking(executor, cfg.run.tracking_uri)
            tracking.ensure_experiment(cfg)
        needed = {runs[i].cfg.data.dataset: runs[i].cfg for i in todo}.values()
        pairs = [(cfg, split) for cfg in needed
                 for split in sorted({cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split})]
        cluster.extract_features(executor, pairs, feature_shards, progress, echo)
        local_progress = progress and executor.kind == "local" and executor.jobs <= 1
        tasks = [cluster.Task(run_one, (runs[i].cfg, runs[i].method, runs[i].seed, local_progress), runs[i].label,
                              (runs[i].cfg.data.dataset,)) for i in todo]
        results.update(zip(todo, cluster.run_tasks(executor, tasks, "benchmark", echo=echo)))
    return [(r, results[i]) for i, r in enumerate(runs)]
