"""Where the work of a command runs: here (``local``: this process, or ``--jobs`` worker processes) or on a Slurm
cluster (``slurm``), through submitit (facebookresearch/submitit, as DINO's ``run_with_submitit.py`` does).

On Slurm, a list of tasks (an ablation's points x seeds, the benchmark's runs) is one job array whose parallelism
is ``--jobs``; a split's feature extraction is one job, or ``--feature-shards N`` array tasks and a merge job that
depends on them. Each job runs one of the harness's ordinary functions (:func:`bench.ablate.run_point`,
:func:`bench.features.extract_shard`, ...) on a node, in the directory it was submitted from, with the same
configuration object, so its results are those of a local run: only *where* it ran differs. Logs go to
``<logs>/<name>/``, one ``<job>_0_log.out`` / ``.err`` pair per task; ``<array>_tasks.tsv`` beside them says which
task is which point. A task that fails (a Python error, or killed by Slurm: out of memory, time limit, node
failure, ``scancel``) is reported as it is seen, and the command then fails with an error naming every failed
task's log; the other tasks run to their end (their results are kept and reused by the next run).

What must be shared between the submitting machine and the nodes: this checkout and its environment (the same
path), the feature cache and the run folders (``features.cache_dir``, ``run.runs_dir``: locations, so they never
enter a config hash), the logs folder, and the MLflow store (a tracking server): docs/cluster.md.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bench import cache, features, tracking
from bench.config import Config, with_overrides
from bench.datasets import get_spec, register_dataset
from bench.features import ensure_features, extract_shard, merge_shards

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")


# Slurm states of a job that ended without running its task to the end (sacct's State column).
ENDED_WITHOUT_RESULT = ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


class ClusterError(RuntimeError):
    """Jobs that failed or could not be submitted: the message names each one and its log."""


@dataclass(frozen=True)
class SlurmOptions:
    """The resources of every job of a submission (sbatch's options of the same names)."""

    partition: str | None = None
    time_min: int = 120
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: float | None = None
    logs: Path = Path("logs/slurm")
    extra: tuple[tuple[str, str], ...] = ()  # any other sbatch option, e.g. (("account", "vision"), ("qos", "low"))
    poll_s: float = 5.0  # how often the queue is asked about unfinished jobs (one sacct call for all of them)


@dataclass(frozen=True)
class Executor:
    """``kind`` local (``jobs`` processes, 1: this process) or slurm (one job array, ``jobs`` tasks at once)."""

    kind: str = "local"
    jobs: int = 1
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ClusterError(f"--executor {self.kind!r}: choose one of {list(EXECUTORS)}")
        if self.jobs < 1:
            raise ClusterError(f"--jobs {self.jobs}: must be >= 1")
        if self.kind == "slurm" and shutil.which("sbatch") is None:
            raise ClusterError("--executor slurm: no Slurm here (sbatch is not on PATH): submit from a machine of "
                               "the cluster")


@dataclass(frozen=True)
class Task:
    """One call ``fn(*args)``; ``label`` names it in logs and errors; ``datasets``: the dataset names it reads
    (their registry entries travel with it, for datasets registered at run time)."""

    fn: Callable[..., Any]
    args: tuple
    label: str
    datasets: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------- workers


def worker_init(threads: int, datasets: Sequence, parent_run_id: str | None) -> None:
    """A worker (a local process or a Slurm task): its torch threads (for evaluation; training runs on
    run.train_threads), the parent's registered datasets, and the MLflow run its runs nest under."""
    import torch


    torch.set_num_threads(max(1, threads))
    for spec in datasets:
        register_dataset(spec)
    tracking.nest_under(parent_run_id)


def _call(task: Task) -> Any:
    return task.fn(*task.args)


def _on_node(task: Task, threads: int, datasets: Sequence, parent_run_id: str | None) -> Any:
    """What a Slurm task runs: set up like a local worker, then the task."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker_init(threads, datasets, parent_run_id)
    log.info("%s on %s", task.label, os.uname().nodename)
    return task.fn(*task.args)


def _specs(tasks: Iterable[Task]) -> list:
    return [get_spec(name) for name in sorted({d for t in tasks for d in t.datasets})]


# ----------------------------------------------------------------------------------------------------- map


def run_tasks(executor: Executor, tasks: list[Task], name: str, parent_run_id: str | None = None,
              echo: Callable[[str], None] = print) -> list[Any]:
    """Every task's result, in order, computed by ``executor``. On Slurm: one job array (at most ``jobs`` tasks at
    once), waited for; failed tasks: a ClusterError naming each and its log, once every task has ended."""
    if not tasks:
        return []
    if executor.kind == "slurm":
        jobs = submit(executor, tasks, name, parent_run_id, echo=echo)
        return wait(executor, jobs, echo)
    if executor.jobs <= 1 or len(tasks) <= 1:
        return [_call(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // executor.jobs)
    context = multiprocessing.get_context("forkserver")  # clean workers: no forked torch threads or MLflow state
    with ProcessPoolExecutor(min(executor.jobs, len(tasks)), mp_context=context, initializer=worker_init,
                             initargs=(threads, _specs(tasks), parent_run_id)) as pool:
        return list(pool.map(_call, tasks))


@dataclass
class Submitted:
    task: Task
    job: Any  # submitit.Job

    @property
    def logs(self) -> str:
        return f"{self.job.paths.stderr} (stdout: {self.job.paths.stdout})"


def _slurm_executor(executor: Executor, name: str, parallelism: int, dependency: str | None = None):
    try:
        import submitit
    except ImportError:
        raise ClusterError("--executor slurm needs submitit: bash scripts/install.sh installs it") from None
    opts = executor.slurm
    folder = Path(opts.logs).absolute() / name
    try:
        ex = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as e:  # no srun on PATH
        raise ClusterError(f"--executor slurm: no Slurm here ({e}): submit from a machine of the cluster") from None
    extra = {"chdir": str(Path.cwd()), **dict(opts.extra)}  # jobs resolve relative paths where they were submitted
    if dependency:
        extra.update(dependency=dependency, kill_on_invalid_dep="yes")  # a failed shard: the merge never runs
    params: dict[str, Any] = {"job_name": name, "time": opts.time_min, "cpus_per_task": opts.cpus_per_task,
                              "array_parallelism": max(1, parallelism), "additional_parameters": extra}
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_task:
        params["gpus_per_task"] = opts.gpus_per_task
    if opts.mem_gb:
        params["mem"] = f"{int(opts.mem_gb * 1024)}M"
    ex.update_parameters(**params)
    return ex, folder


def _warn_about_threads(cpus_per_task: int, tasks: list[Task]) -> None:
    """A task that trains on more torch threads than the CPUs Slurm gives it oversubscribes them: measured here,
    2 threads on 1 CPU made a 4-step training take 20-60 s instead of 2. ``run.train_threads`` is part of a
    configuration (it changes results), so it is never lowered behind the user's back: they are told."""
    wanted = max((a.run.train_threads for t in tasks for a in t.args if isinstance(a, Config)), default=0)
    if wanted > cpus_per_task:
        log.warning("run.train_threads=%d but --cpus-per-task %d: each task's training oversubscribes its CPUs "
                    "and runs many times slower; ask for --cpus-per-task %d", wanted, cpus_per_task, wanted)


def submit(executor: Executor, tasks: list[Task], name: str, parent_run_id: str | None = None,
           parallelism: int | None = None, dependency: str | None = None,
           echo: Callable[[str], None] = print) -> list[Submitted]:
    """Submit ``tasks`` as one Slurm job array (one plain job when there is one task); nothing is waited for."""
    ex, folder = _slurm_executor(executor, name, parallelism or executor.jobs, dependency)
    specs = _specs(tasks)
    _warn_about_threads(executor.slurm.cpus_per_task, tasks)
    try:
        jobs = ex.map_array(_on_node, tasks, [executor.slurm.cpus_per_task] * len(tasks), [specs] * len(tasks),
                            [parent_run_id] * len(tasks))
    except Exception as e:  # noqa: BLE001 (sbatch's own message says what is wrong)
        raise ClusterError(f"{name}: sbatch refused the submission: {e}") from None
    submitted = [Submitted(t, j) for t, j in zip(tasks, jobs)]
    array = jobs[0].job_id.split("_")[0]
    index = folder / f"{array}_tasks.tsv"
    with open(index, "w", newline="") as f:
        out = csv.writer(f, delimiter="\t")
        out.writerow(["task", "job", "stdout", "stderr"])
        for s in submitted:
            out.writerow([s.task.label, s.job.job_id, s.job.paths.stdout, s.job.paths.stderr])
    echo(f"{name}: submitted Slurm job {array} ({len(tasks)} task{'s' * (len(tasks) > 1)}"
         + (f", at most {min(parallelism or executor.jobs, len(tasks))} at once" if len(tasks) > 1 else "")
         + (f", after {dependency}" if dependency else "") + f"); logs: {folder} (which task is which: {index})")
    return submitted


def wait(executor: Executor, submitted: list[Submitted], echo: Callable[[str], None] = print) -> list[Any]:
    """Results of submitted jobs, in order, once every one has ended; a failure is echoed when it is seen, and
    every failure is then raised at once (ClusterError naming each task, its Slurm state and its log)."""
    results, failures = wait_all(executor, submitted, echo)
    if failures:
        raise ClusterError(f"{len(failures)} of {len(submitted)} Slurm job(s) failed:\n" + "\n".join(failures))
    return [results[i] for i in range(len(submitted))]


def wait_all(executor: Executor, submitted: list[Submitted],
             echo: Callable[[str], None] = print) -> tuple[dict[int, Any], list[str]]:
    """({index: result} of the jobs that succeeded, [a line per failed job]), once every job has ended."""
    from submitit.core.utils import FailedJobError, UncompletedJobError
    from submitit.slurm.slurm import SlurmJob

    pending, results, failures = set(range(len(submitted))), {}, []
    last_poll = 0.0
    while pending:
        if time.monotonic() - last_poll >= executor.slurm.poll_s:
            SlurmJob.watcher.update()  # one sacct call for every unfinished job: a killed job is seen promptly
            last_poll = time.monotonic()
        for i in sorted(pending):
            s = submitted[i]
            if not s.job.done():
                continue
            pending.discard(i)
            if s.job.state.split()[0] in ENDED_WITHOUT_RESULT:
                s.job._results_timeout_s = 2  # submitit waits 15 s for a result file that such a job never writes
            try:
                results[i] = s.job.result()
            except FailedJobError as e:
                line = f"{s.task.label}: Slurm job {s.job.job_id} raised {_reason(e)}; log: {s.logs}"
            except UncompletedJobError:
                last = _last_line(s.job.paths.stderr)
                line = (f"{s.task.label}: Slurm job {s.job.job_id} ended without a result ({s.job.state})"
                        + (f": {last}" if last else "") + f"; log: {s.logs}")
            else:
                continue
            echo(f"failed: {line}")
            failures.append(line)
        if pending:
            time.sleep(1)
    return results, failures


def _reason(error: Exception) -> str:
    """A task's Python exception: its traceback's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    trace = [line for line in lines if not line.startswith(("-", "You can check", "or at paths", "Job (task="))]
    return trace[-1] if trace else type(error).__name__


def _last_line(path: Path) -> str:
    """The last line of a log (Slurm says there why it ended a job), if any."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def cancel(submitted: Iterable[Submitted]) -> None:
    for s in submitted:
        try:
            s.job.cancel(check=False)
        except Exception as e:  # noqa: BLE001
            log.warning("could not cancel Slurm job %s: %s", s.job.job_id, e)


def warn_about_tracking(executor: Executor, tracking_uri: str | None) -> None:
    if executor.kind == "slurm" and (tracking_uri or "").startswith("sqlite:"):
        log.warning("--executor slurm with the MLflow store %s: nodes writing one SQLite file over a network "
                    "filesystem may lose runs; use an MLflow server (docs/cluster.md)", tracking_uri)


# ------------------------------------------------------------------------------------------------ features


def extract_features(executor: Executor, pairs: Iterable[tuple[Any, str]], shards: int = 1, progress: bool = True,
                     echo: Callable[[str], None] = print) -> None:
    """The feature cache entries of (config, split) pairs that are missing, made by ``executor``.

    local: each computed here (``shards`` > 1: shard after shard, then merged: the same entry). slurm: per
    missing entry, one job (``shards`` = 1) or an array of the missing shards and a merge job that runs only if
    every shard succeeded (a split of fewer batches than ``shards``: one shard a batch); everything is submitted
    before anything is waited for. A failed shard: the merge job is cancelled, no entry is written, and a
    ClusterError names the shard's log."""
    todo = _missing_entries(pairs)
    if not todo:
        return
    if shards < 1:
        raise ClusterError(f"--feature-shards {shards}: must be >= 1")
    counts = [features.shard_count(cfg, split, shards) if shards > 1 else 1 for cfg, split in todo]
    if executor.kind == "local":
        for (cfg, split), n in zip(todo, counts):
            if n == 1:
                features.ensure_features(cfg, split, progress=progress)
                continue
            for i in features.missing_shards(cfg, split, n):
                features.extract_shard(cfg, split, i, n, progress=progress)
            features.merge_shards(cfg, split, n)
        return
    groups = []
    for (cfg, split), n in zip(todo, counts):
        name = f"features-{cfg.data.dataset}-{split}"
        what = (cfg.data.dataset,)
        if n == 1:
            groups.append((submit(executor, [Task(_ensure, (cfg, split), f"features {cfg.data.dataset}/{split}", what)],
                                  name, echo=echo), []))
            continue
        missing = features.missing_shards(cfg, split, n)
        parts = submit(executor, [Task(_shard, (cfg, split, i, n), f"features {cfg.data.dataset}/{split} shard "
                                       f"{i}/{n}", what) for i in missing], name,
                       parallelism=len(missing), echo=echo) if missing else []
        after = f"afterok:{parts[0].job.job_id.split('_')[0]}" if parts else None
        merge = submit(executor, [Task(_merge, (cfg, split, n), f"features {cfg.data.dataset}/{split} merge of "
                                       f"{n} shards", what)], f"{name}-merge", dependency=after, echo=echo)
        groups.append((parts, merge))
    failures = []
    for first, merge in groups:
        _, failed = wait_all(executor, first, echo)
        if failed and merge:
            cancel(merge)
            failures += failed + [f"{merge[0].task.label}: not run (cancelled: a shard failed); no entry written"]
            continue
        if merge:
            failures += wait_all(executor, merge, echo)[1]
        else:
            failures += failed
    if failures:
        raise ClusterError("feature extraction failed:\n" + "\n".join(failures))


def _missing_entries(pairs: Iterable[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """The pairs whose entry is not valid, one per extraction (one pass writes every feature type of a split)."""
    todo, seen = [], set()
    for cfg, split in pairs:
        if cache.is_valid(cache.cache_dir(cfg, split), cache.expected_meta(cfg, split)):
            continue
        key = (cache.cache_dir(with_overrides(cfg, {"features.type": "tokens"}), split), split)
        if key not in seen:
            seen.add(key)
            todo.append((cfg, split))
    return todo


def _ensure(cfg, split: str) -> str:
    return str(ensure_features(cfg, split, progress=False))


def _shard(cfg, split: str, shard: int, shards: int) -> str:
    return str(extract_shard(cfg, split, shard, shards, progress=False))


def _merge(cfg, split: str, shards: int) -> str:
    return str(merge_shards(cfg, split, shards))
