"""`acseg-bench`: the command line. DVC stages call these same commands (dvc.yaml); DVC runs the pipeline.

Every command reads params.yaml (``--params``), selects a dataset (``--dataset``; default: the first of
``benchmark.datasets``), then ``--set section.field=value`` overrides; heavy libraries are imported only inside
commands, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible benchmark and ablation harness for ACSeg (CVPR 2023). `dvc repro` runs the "
                       "default benchmark; these are its stages.")

ParamsOpt = Annotated[Path, typer.Option("--params", help="DVC params file to read.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A registered dataset (default: the first of "
                                                   "benchmark.datasets); its datasets.<name> settings apply.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override, e.g. -s acseg.prototypes=10 "
                                                     "(repeatable).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda[:N] (falls back to cpu with a message).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="One seed (default: every seed of benchmark.seeds).")]
MethodOpt = Annotated[str, typer.Option("--method", help="A registered method (`acseg-bench methods`).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
CrfOpt = Annotated[bool, typer.Option("--crf", help="Dense-CRF post-processing (params section crf); results go to "
                                      "the run's crf/ folder with crf=true.")]

# --verbose/-v, before the command or after it (every command takes it: `acseg-bench train -v` is what one types
# after an error): debug logging, and _fail prints the traceback of the exception behind its one line.
_verbose = False


def _verbosity(value: bool) -> bool:
    """--verbose before the command (the app's callback, which resets it for each invocation) or after it."""
    global _verbose
    if value:
        _verbose = True
        logging.getLogger().setLevel(logging.DEBUG)
    return value


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", callback=_verbosity, help="Debug logging, and the "
                                          "traceback of an error.")]


# Where the work of `features`, `ablate` and `benchmark` runs (bench/cluster.py; docs/cluster.md).
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local: on this machine; slurm: as Slurm jobs "
                                          "submitted through submitit, waited for (docs/cluster.md).")]
PartitionOpt = Annotated[Optional[str], typer.Option("--partition", help="Slurm: the partition (default: the "
                                                     "cluster's).", rich_help_panel="Slurm")]
TimeOpt = Annotated[int, typer.Option("--time", min=1, help="Slurm: each job's time limit, minutes.",
                                      rich_help_panel="Slurm")]
CpusOpt = Annotated[int, typer.Option("--cpus-per-task", min=1, help="Slurm: CPUs of each job (its torch threads "
                                      "for evaluation and extraction).", rich_help_panel="Slurm")]
GpusOpt = Annotated[int, typer.Option("--gpus-per-task", min=0, help="Slurm: GPUs of each job (with --device "
                                      "cuda).", rich_help_panel="Slurm")]
MemOpt = Annotated[Optional[float], typer.Option("--mem", min=0, help="Slurm: memory of each job, GB (default: the "
                                                 "cluster's).", rich_help_panel="Slurm")]
LogsOpt = Annotated[Path, typer.Option("--logs", help="Slurm: the jobs' logs and submitit's files (on a filesystem "
                                       "the nodes share), one folder per submission.", rich_help_panel="Slurm")]
SlurmArgOpt = Annotated[Optional[list[str]], typer.Option(
    "--slurm-arg", help="Slurm: any other sbatch option as KEY=VALUE, e.g. --slurm-arg account=vision --slurm-arg "
                        "qos=low (repeatable).", rich_help_panel="Slurm")]
ShardsOpt = Annotated[int, typer.Option("--feature-shards", min=1, help="Missing feature caches: each split's "
                                        "extraction in this many shards (Slurm: array tasks, then a merge job).")]


def _executor(kind: str, jobs: int, partition: str | None, time: int, cpus: int, gpus: int, mem: float | None,
              logs: Path, slurm_args: list[str] | None):
    from bench.cluster import ClusterError, Executor, SlurmOptions

    extra = []
    for arg in slurm_args or []:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            _fail(f"--slurm-arg {arg!r} must look like KEY=VALUE (an sbatch option without its dashes)")
        extra.append((key.strip().lstrip("-"), value))
    try:
        return Executor(kind, jobs, SlurmOptions(partition, time, cpus, gpus, mem, logs, tuple(extra)))
    except ClusterError as e:
        _fail(str(e))


def _guard_jobs(fn, *args, **kwargs):
    """_guard, and jobs that failed (on Slurm: each named with its log) or shards that cannot be merged."""
    from bench.cluster import ClusterError
    from bench.features import ShardError

    try:
        return _guard(fn, *args, **kwargs)
    except (ClusterError, ShardError) as e:
        _fail(str(e))


def _config(params: Path, dataset: str | None, sets: list[str] | None, device: str | None = None):
    from bench.config import ConfigError
    from bench.schema import load_config

    overrides = list(sets or []) + ([f"run.device={device}"] if device else [])
    try:
        return load_config(params, dataset=dataset, overrides=overrides)
    except ConfigError as e:
        _fail(str(e))


def _arithmetic(cfg, methods) -> None:
    """Before torch starts: pin the float arithmetic (bench/arithmetic.py) when the command runs ACSeg and the params
    say acseg.arithmetic: pinned (then the other methods in the same process run pinned too)."""
    if "acseg" in methods and cfg.acseg.arithmetic == "pinned":
        from bench.arithmetic import pin

        pin()


def _fail(message: str):
    """One line, exit code 2; with --verbose, first the traceback of the exception being handled (if any)."""
    if _verbose and sys.exc_info()[0] is not None:
        import traceback

        typer.echo(traceback.format_exc().rstrip(), err=True)
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _guard(fn, *args, **kwargs):
    """Run a step; expected failures (bad data, weights, params, files, disks) become one clear line, exit code 2.
    Anything else is a bug and keeps its traceback."""
    from bench.backbones import WeightsError
    from bench.cache import CacheError
    from bench.config import ConfigError
    from bench.data import DatasetError
    from bench.methods import TrainingDiverged
    from bench.store import RunError

    try:
        return fn(*args, **kwargs)
    except (DatasetError, WeightsError, CacheError, RunError, ConfigError, TrainingDiverged) as e:  # say what to do
        _fail(str(e))
    except Exception as e:  # judged by _user_error; what is not a user's error (a bug) is raised again
        message = _user_error(e)
        if message is None:
            raise
        _fail(message)


# What to do about an OSError, by errno: the folders a run writes can be moved with --set.
_MOVE = "or point run.runs_dir / features.cache_dir elsewhere with --set"


def _user_error(e: Exception) -> str | None:
    """The one line for an exception caused by the user's files or machine, or None for anything else (a bug)."""
    import errno

    def raised_by(module: str, name: str) -> bool:  # a module not imported (nor imported here) raised nothing
        cls = getattr(sys.modules.get(module), name, None)
        return isinstance(cls, type) and isinstance(e, cls)

    where = None if isinstance(e, OSError) and e.filename is not None else _file_of(e)
    if isinstance(e, OSError):
        if e.filename is None:  # our own FileNotFoundError messages name their file; PIL's errors do not
            return f"{where}: {e}" if where and where not in str(e) else str(e)
        path = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        reason = f"[Errno {e.errno}] {e.strerror}"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"cannot write {path}: {reason} (free space on that disk, {_MOVE})"
        if e.errno == errno.EROFS or (e.errno in (errno.EACCES, errno.EPERM) and (
                not os.path.exists(e.filename) or os.access(e.filename, os.R_OK))):  # readable: a write failed
            return f"cannot write {path}: {reason} (make it writable for you, {_MOVE})"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"cannot read {path}: {reason} (make it readable for you)"
        return f"{path}: {reason}"
    if isinstance(e, UnicodeDecodeError):
        return (f"cannot read {where or 'a text file'}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                f"{e.start}: {e.reason}); save it as UTF-8")
    if raised_by("PIL.Image", "DecompressionBombError"):
        return f"cannot read {where or 'an image'}: {e} (PIL refuses images this large)"
    # A bad model file makes torch.load raise anything (EOFError, RuntimeError, KeyError, UnpicklingError): what it
    # raised is judged by where (a TypeError there: torch.load called wrongly, a bug). Click would turn an EOFError
    # (pickle's error for an empty file) into a bare "Aborted!".
    torch_load = os.path.join("torch", "serialization.py")
    in_torch_load = any(f.f_code.co_name == "load" and f.f_code.co_filename.endswith(torch_load) for f in _frames(e))
    if raised_by("safetensors", "SafetensorError") or isinstance(e, EOFError) or (
            in_torch_load and not isinstance(e, TypeError)):
        why = str(e).splitlines()[0].split(". ")[0] if str(e) else "it ends too early"
        return (f"cannot load {where or 'a saved file'}: {type(e).__name__}: {why} (an empty, truncated or corrupt "
                "file: delete it and rerun the step that writes it)")
    if isinstance(e, ValueError):
        return _one_line(str(e))
    return None


def _one_line(text: str) -> str:
    """A library's message of several lines (Hydra's, OmegaConf's) as one."""
    import re

    return re.sub(r"\s*\n\s*", "; ", text.strip()).replace(":; ", ": ").replace(".; ", ". ")


def _frames(e: BaseException) -> list:
    """The frames an exception passed, innermost first."""
    import traceback

    return [frame for frame, _ in traceback.walk_tb(e.__traceback__)][::-1]


def _file_of(e: BaseException) -> str | None:
    """The file an exception was reading, for errors that do not say (a decode error, a corrupt pickle): from the
    frames it passed, innermost first, an open file's name or a path argument naming an existing file."""
    import io

    for frame in _frames(e):
        for name in ("f", "fp", "file", "filename", "path"):
            value = frame.f_locals.get(name)
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                return os.fspath(value)
    return None


def _seeds(cfg, seed: int | None) -> list[int]:
    return [seed] if seed is not None else cfg.benchmark.seeds


@app.callback()
def main(verbose: VerboseOpt = False):
    global _verbose
    _verbose = verbose  # one process may run several invocations (tests)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def fetch(dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
          verbose: VerboseOpt = False):
    """Download (or take a local copy of) a dataset and verify every file; writes data/<dataset>.json."""
    from bench.data import record_path
    from bench.runs import run_fetch

    cfg = _config(params, dataset, set_)
    record = _guard(run_fetch, cfg)
    typer.echo(f"verified {record['title']}: {record['splits_present']} (absent: {record['splits_absent']}) "
               f"-> {record_path(cfg.data.dataset)}")


@app.command()
def features(
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split(s) to extract (default: train, "
                                                       "cluster and eval splits).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/N: compute only shard I (0..N-1) of the split's "
                                                 "extraction in N shards (whole batches of the serial pass), "
                                                 "published as a part; then --merge N.")] = None,
    merge: Annotated[Optional[int], typer.Option("--merge", min=1, help="N: merge the N shards' parts into the "
                                                 "cache entry (atomically; a missing shard: an error, no "
                                                 "entry).")] = None,
    shards: Annotated[int, typer.Option("--shards", min=1, help="Extract each split in this many shards, then merge "
                                        "them (--executor slurm: an array of shards, then a dependent merge "
                                        "job).")] = 1,
    executor: ExecutorOpt = "local", partition: PartitionOpt = None, time: TimeOpt = 120, cpus_per_task: CpusOpt = 1,
    gpus_per_task: GpusOpt = 0, mem: MemOpt = None, logs: LogsOpt = Path("logs/slurm"), slurm_arg: SlurmArgOpt = None,
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
):
    """Extract backbone features into the cache (once per split's content, backbone, weights, feature type, size):
    here, in shards, or as Slurm jobs. The merged entry of N shards is bitwise the serial one."""
    from bench import cache
    from bench import features as feats
    from bench.cluster import extract_features

    cfg = _config(params, dataset, set_, device)
    splits = split or sorted({cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split})
    if shard is not None:
        if merge is not None or executor != "local" or shards != 1:
            _fail("--shard computes one shard here: not with --merge, --shards or --executor")
        index, sep, count = shard.partition("/")
        if not sep or not index.isdigit() or not count.isdigit() or int(count) < 1:
            _fail(f"--shard {shard!r} must look like I/N, e.g. 0/4 (shards 0 to N-1)")
        for s in splits:
            typer.echo(f"{s}: {_guard_jobs(feats.extract_shard, cfg, s, int(index), int(count), progress=not quiet)}")
        return
    if merge is not None:
        if executor != "local" or shards != 1:
            _fail("--merge merges here: not with --shards or --executor")
        for s in splits:
            typer.echo(f"{s}: {_guard_jobs(feats.merge_shards, cfg, s, merge)}")
        return
    jobs = _executor(executor, shards, partition, time, cpus_per_task, gpus_per_task, mem, logs, slurm_arg)
    _guard_jobs(extract_features, jobs, [(cfg, s) for s in splits], shards, not quiet, typer.echo)
    for s in splits:
        typer.echo(f"{s}: {cache.cache_dir(cfg, s)}")


@app.command()
def train(method: MethodOpt = "acseg", seed: SeedOpt = None, dataset: DatasetOpt = None,
          params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
          quiet: QuietOpt = False, verbose: VerboseOpt = False):
    """Fit a method on the cached features (ACSeg: concept generator, then concept classifier; k-means: centroids;
    STEGO: head and cluster probe, last step kept)."""
    cfg = _config(params, dataset, set_, device)
    _arithmetic(cfg, [method])
    from bench.methods import get_method
    from bench.runs import run_train

    _guard(get_method, method)
    for s in _seeds(cfg, seed):
        typer.echo(f"{cfg.data.dataset} {method} seed {s}: {_guard(run_train, cfg, method, s, progress=not quiet)}")


@app.command()
def evaluate(
    method: Annotated[Optional[str], typer.Option("--method", help="A registered method (default: every method of "
                                                  "benchmark.methods; with --crf, of benchmark.crf_methods).")] = None,
    seed: SeedOpt = None, crf: CrfOpt = False, dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False, verbose: VerboseOpt = False,
):
    """Evaluate trained runs on the evaluation split (Hungarian-matched mIoU and accuracy). Several runs (no --method
    or no --seed) are evaluated in one pass: features and labels read once, each image's CRF kernels built once."""
    cfg = _config(params, dataset, set_, device)
    methods = [method] if method else cfg.benchmark.crf_methods if crf else cfg.benchmark.methods
    _arithmetic(cfg, methods)
    from bench.methods import get_method
    from bench.runs import evaluate_runs

    for m in methods:
        _guard(get_method, m)
    runs = [(m, s) for m in methods for s in _seeds(cfg, seed)]
    for (m, s), metrics in _guard(evaluate_runs, cfg, runs, crf=crf, progress=not quiet).items():
        typer.echo(f"{m}{' + CRF' if crf else ''} seed {s}: mIoU {metrics['miou']:.2f}  acc {metrics['acc']:.2f}  "
                   f"({metrics['dataset_title']} {metrics['split']})"
                   + (f"; over-clustering K'={metrics['overcluster_k']} (majority matching, a separate metric): mIoU "
                      f"{metrics['miou_overcluster']:.2f}" if "miou_overcluster" in metrics else ""))


@app.command()
def diagnose(seed: SeedOpt = None, dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"),
             set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False,
             verbose: VerboseOpt = False):
    """Where ACSeg falls short: modularity and majority-class oracle of its concepts vs per-image k-means.

    The oracle uses labels to judge partitions only; nothing is tuned or selected with it.
    """
    cfg = _config(params, dataset, set_, device)
    _arithmetic(cfg, ["acseg"])
    from bench.runs import run_diagnose

    for s in _seeds(cfg, seed):
        r = _guard(run_diagnose, cfg, s, progress=not quiet)
        q = r["modularity"]
        typer.echo(f"seed {s}: modularity on the dense / k-NN graph: ACSeg {q['dense']['acseg']:.3f} / "
                   f"{q['knn']['acseg']:.3f}, per-image k-means {q['dense']['per_image_kmeans']:.3f} / "
                   f"{q['knn']['per_image_kmeans']:.3f}, ground truth {q['dense']['ground_truth']:.3f} / "
                   f"{q['knn']['ground_truth']:.3f}; oracle mIoU {r['oracle_miou_learned']:.1f} (per-image k-means "
                   f"{r['oracle_miou_per_image_kmeans']:.1f}); classifier ceiling (ground-truth partitions) "
                   f"{r['classifier_ceiling_miou']:.1f}; concepts/image {r['concepts_per_image_mean']:.2f}")


def _axes_help() -> str:
    from bench.ablate import ALIASES

    return ("; ".join(f"--{name.replace('_', '-')}: {axis.title}" for name, axis in ALIASES.items())
            + "; or any parameter as --section.field (e.g. --acseg.graph.k 5,13)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ablate(
    ctx: typer.Context,
    sweep_names: Annotated[Optional[str], typer.Option(
        "--sweep", help="Run sweeps of the params' ablations.sweeps by name (comma list; 'all': every one, as "
                        "`dvc repro` does), at the ablations' budget ablations.train_steps.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma list of seeds (default: "
                                                 "benchmark.seeds).")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1,
                                                help="Points trained at once (default: ablations.jobs).")] = None,
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Where the points' run folders go.")] = "runs/ablations",
    out: Annotated[Optional[Path], typer.Option("--out", help="Tidy CSV, one row per run "
                                                "(default: <runs-dir>/<axes>.csv).")] = None,
    executor: ExecutorOpt = "local", feature_shards: ShardsOpt = 1, partition: PartitionOpt = None,
    time: TimeOpt = 120, cpus_per_task: CpusOpt = 1, gpus_per_task: GpusOpt = 0, mem: MemOpt = None,
    logs: LogsOpt = Path("logs/slurm"), slurm_arg: SlurmArgOpt = None,
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
    device: DeviceOpt = None, quiet: QuietOpt = False, verbose: VerboseOpt = False,
):
    """Sweep ACSeg's choices: each axis a comma list (e.g. --prototypes 5,10,20), several axes = their grid, every
    point x seed trained (ablations.train_steps steps) and evaluated on the cached features of ablations.dataset, one
    MLflow parent run with a nested run each. Points already run with the same config are reused (not submitted).
    --executor slurm: the points x seeds are one Slurm job array, --jobs at once. Axes: see
    `acseg-bench ablate --help-axes`."""
    raw, extra = {}, list(ctx.args)
    if extra == ["--help-axes"]:
        typer.echo(_axes_help())
        return
    while extra:
        option = extra.pop(0)
        name, _, value = option.partition("=")
        if not name.startswith("--"):
            _fail(f"unexpected argument {option!r}; axes are given as --<axis> values ({_axes_help()})")
        if not value:
            if not extra:
                _fail(f"{name} needs a comma list of values")
            value = extra.pop(0)
        raw[name[2:].replace("-", "_")] = value
    first = _config(params, dataset, set_, device)
    cfg = first if dataset or first.data.dataset == first.ablations.dataset else _config(
        params, first.ablations.dataset, set_, device)
    _arithmetic(cfg, [cfg.ablations.method])  # before torch starts: the arithmetic of the sweeps' method
    from bench.ablate import budget, parse_axes, run_sweeps, sweep
    from bench.config import ConfigError

    if sweep_names is not None:
        if raw:
            _fail("give either --sweep (sweeps from the params) or axes, not both")
        names = [] if sweep_names == "all" else [n.strip() for n in sweep_names.split(",") if n.strip()]
        where = _executor(executor, jobs or cfg.ablations.jobs, partition, time, cpus_per_task, gpus_per_task, mem,
                          logs, slurm_arg)
        for path in _guard_jobs(run_sweeps, cfg, names, progress=not quiet, echo=typer.echo, jobs=jobs,
                                executor=where, feature_shards=feature_shards):
            typer.echo(str(path))
        return
    try:
        axes = parse_axes(raw)
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds else cfg.benchmark.seeds
    except (ConfigError, ValueError) as e:
        _fail(f"{e}")
    name = "+".join(axes)
    where = _executor(executor, jobs or cfg.ablations.jobs, partition, time, cpus_per_task, gpus_per_task, mem, logs,
                      slurm_arg)
    path = _guard_jobs(sweep, _guard(budget, cfg), axes, seed_list, runs_dir, out or Path(runs_dir) / f"{name}.csv",
                       progress=not quiet, echo=typer.echo, jobs=where.jobs, name=name, executor=where,
                       feature_shards=feature_shards)
    typer.echo(f"{len(seed_list)} seeds x {len(axes)} axes -> {path}")


@app.command()
def benchmark(
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", help="Dataset(s) (default: every one of "
                                                         "benchmark.datasets; repeatable).")] = None,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="Method(s) (default: benchmark.methods; "
                                                        "repeatable).")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma list of seeds (default: "
                                                 "benchmark.seeds).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once (local processes, or the Slurm "
                                      "array's parallelism).")] = 1,
    executor: ExecutorOpt = "local", feature_shards: ShardsOpt = 1, partition: PartitionOpt = None,
    time: TimeOpt = 120, cpus_per_task: CpusOpt = 1, gpus_per_task: GpusOpt = 0, mem: MemOpt = None,
    logs: LogsOpt = Path("logs/slurm"), slurm_arg: SlurmArgOpt = None,
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
):
    """Train and evaluate every dataset x method x seed of the benchmark (dvc.yaml's train and evaluate stages, in
    their run folders), features first: here, or as one Slurm job array (--executor slurm). Runs already evaluated
    with the same config are reused (not submitted). Then `acseg-bench evaluate --crf` and `results` as usual."""
    first = _config(params, None, set_, device)
    configs = [_config(params, d, set_, device) for d in (dataset or first.benchmark.datasets)]
    methods = method or first.benchmark.methods
    _arithmetic(first, methods)
    from bench.matrix import run_matrix
    from bench.methods import get_method

    for m in methods:
        _guard(get_method, m)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds else first.benchmark.seeds
    except ValueError:
        _fail(f"--seeds {seeds!r}: a comma list of integers")
    where = _executor(executor, jobs, partition, time, cpus_per_task, gpus_per_task, mem, logs, slurm_arg)
    for run, metrics in _guard_jobs(run_matrix, configs, methods, seed_list, where, feature_shards, not quiet,
                                    typer.echo):
        typer.echo(f"{run.label}: mIoU {metrics['miou']:.2f}  acc {metrics['acc']:.2f}")


@app.command()
def study(
    path: Annotated[Path, typer.Argument(help="A sweep file, e.g. studies/sweeps/seeds5.yaml.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where <name>.csv, .md and .png go.")] = Path(
        "reports/variants"),
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Where the points' run folders go.")] = "runs/studies",
    executor: ExecutorOpt = "local", jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once "
                                                                       "(Slurm).")] = 1,
    partition: PartitionOpt = None, time: TimeOpt = 120, cpus_per_task: CpusOpt = 1, gpus_per_task: GpusOpt = 0,
    mem: MemOpt = None, logs: LogsOpt = Path("logs/slurm"), slurm_arg: SlurmArgOpt = None,
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False, verbose: VerboseOpt = False,
):
    """Run a study: named whole configurations (each a method with its overrides) side by side on its datasets and
    seeds, through the same steps as an ablation; a benchmark run of the same config is reused. Writes the rows,
    each point's mean +- std, 95 % CI and Welch p against the study's reference, and a figure of every seed."""
    import json

    import yaml

    # Read here what the configurations need before torch starts (the study's set, datasets and methods); run_study
    # reads the file again and reports whatever else is wrong with it (a wrong shape is left to it).
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except yaml.YAMLError as e:
        _fail(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
    except (OSError, UnicodeDecodeError) as e:
        _fail(_user_error(e))
    raw = raw if isinstance(raw, dict) else {}
    sets, points = ({} if not isinstance(raw.get(k), dict) else raw[k] for k in ("set", "points"))
    datasets = [d for d in raw["datasets"] if isinstance(d, str)] if isinstance(raw.get("datasets"), list) else []
    common = [*(set_ or []), *(f"{k}={json.dumps(v)}" for k, v in sets.items())]
    bases = {d: _config(params, d, common) for d in datasets or [None]}
    first = next(iter(bases.values()))
    _arithmetic(first, [p.get("method") for p in points.values() if isinstance(p, dict)])
    from bench.studies import run_study

    where = _executor(executor, jobs, partition, time, cpus_per_task, gpus_per_task, mem, logs, slurm_arg)
    out = _guard_jobs(run_study, path, bases, out_dir, runs_dir, progress=not quiet, echo=typer.echo,
                      executor=where)
    typer.echo(str(out))


@app.command()
def ablations(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, verbose: VerboseOpt = False):
    """Collect every sweep of ablations.sweeps into ablations.out_csv (one tidy row per run)."""
    from bench.ablate import collect_ablations

    cfg = _config(params, None, set_)
    typer.echo(str(_guard(collect_ablations, cfg)))


@app.command()
def results(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, verbose: VerboseOpt = False):
    """Collect every evaluated run of the benchmark's datasets and methods into run.results_csv."""
    from bench.runs import collect_results

    cfg = _config(params, None, set_)
    typer.echo(str(_guard(collect_results, cfg)))


@app.command()
def report(
    ablations: Annotated[str, typer.Option(help="Ablations CSV (skipped when absent; 'none': not used).")] = "reports/ablations.csv",
    out: Annotated[Path, typer.Option("--out", help="Folder of the report (README.md + figures/).")] = Path("reports"),
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, verbose: VerboseOpt = False,
):
    """Build reports/README.md and its figures from the results and ablations CSVs (nothing recomputed)."""
    from bench.report import run_report

    cfg = _config(params, None, set_)
    typer.echo(str(_guard(run_report, cfg, None if ablations.lower() in ("", "none") else ablations, out)))


@app.command("params")
def compose_params(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides, e.g. experiment=paper_voc2012 "
                                                             "acseg.prototypes=5.")] = None,
    out: Annotated[Path, typer.Option("--out", help="The params file to write.")] = Path("params.yaml"),
    conf: Annotated[Path, typer.Option("--conf", help="The Hydra config folder.")] = Path("conf"),
    verbose: VerboseOpt = False,
):
    """Compose conf/ into params.yaml, exactly as `dvc exp run` does (for a plain `dvc repro` after editing conf/)."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException

    def compose() -> None:
        try:
            compose_and_dump(out, str(conf.resolve()), None, "config", str(Path(".dvc/hydra_plugins").resolve()),
                             list(overrides or []))
        except HydraException as e:  # caught before _guard: several lines, and some are OSErrors naming no file
            _fail(f"cannot compose {conf}: {_one_line(str(e).split('Config search path:')[0])}")

    _guard(compose)
    _config(out, None, [])  # validated
    typer.echo(str(out))


@app.command()
def perf(
    images: Annotated[int, typer.Option("--images", help="Images of the evaluation split for the feature, ACSeg "
                                        "inference, concept-step, k-means and evaluation-speed measures (a split "
                                        "without a feature cache: its first images are extracted for the run).")] = 24,
    memory_images: Annotated[int, typer.Option("--memory-images", help="N of the peak-memory measure (N and 2N "
                                               "training images, each evaluated in a fresh process).")] = 150,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps (ACSeg and STEGO).")] = 20,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Training steps before timing.")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", help="Feature extraction: best of this many rounds.")] = 2,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Fast measures (ACSeg inference, concept step, "
                                               "k-means, evaluation without CRF) repeat until this long.")] = 2.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch threads (default: torch's default).")] = None,
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="One more feature-pipeline round under "
                                          "cProfile: where its time goes (feature_pipeline_profile_* rows).")] = True,
    out: Annotated[Path, typer.Option("--out", help="Folder of performance.csv and performance.md.")] = Path("reports"),
    repro_timing: Annotated[Path, typer.Option("--repro-timing", help="dvc repro timings to copy in (written by "
                                               "pipelines/time_repro.sh), if present.")] = Path("reports/repro_timing.json"),
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False, verbose: VerboseOpt = False,
):
    """Speed and memory, side by side on the same images: feature pipeline vs bare timm (with its profile), ACSeg's
    inference vs the backbone's forward, the concept step vs per-image scikit-learn k-means and the study's
    batched k-means generator (with FLOPs), training steps/s, evaluation images/s (with and without CRF), peak memory."""
    import shlex

    cfg = _config(params, dataset, set_, device)
    _arithmetic(cfg, ["acseg"])  # ACSeg's speed as the benchmark runs it
    import torch

    from bench.features import resolve_device
    from bench.perf import machine, repro_processor, run_suite, write_report

    if threads:
        torch.set_num_threads(threads)
    rows = _guard(run_suite, cfg, images=images, memory_images=memory_images, steps=steps, warmup_steps=warmup_steps,
                  repeats=repeats, min_seconds=min_seconds, progress=not quiet, repro_timing=repro_timing,
                  profile=profile)
    argv = ["acseg-bench", "perf", "--images", str(images), "--memory-images", str(memory_images), "--steps",
            str(steps), "--warmup-steps", str(warmup_steps), "--repeats", str(repeats), "--min-seconds", f"{min_seconds:g}"]
    argv += (["--threads", str(threads)] if threads else []) + ([] if profile else ["--no-profile"])
    argv += (["--device", device] if device else [])
    argv += (["--dataset", dataset] if dataset else []) + (["--params", str(params)] if str(params) != "params.yaml" else [])
    argv += (["--out", str(out)] if out != Path("reports") else [])
    for s in set_ or []:
        argv += ["--set", s]
    csv_path, md_path = _guard(lambda: write_report(rows, out, shlex.join(argv),
                                                    machine(resolve_device(cfg.run.device)),
                                                    repro_processor(repro_timing)))
    for r in rows:
        typer.echo(f"{r.measure}: {r.value:.4g} {r.unit}")
    typer.echo(f"-> {csv_path}, {md_path}")


@app.command()
def datasets(verbose: VerboseOpt = False):
    """The registered datasets: name, classes, where a local copy may be named, how to get each."""
    from bench.datasets import DATASETS

    for spec in DATASETS.values():
        typer.echo(f"{spec.name}: {spec.title}, {spec.n_classes} classes, void {spec.ignore_index}, splits "
                   f"{list(spec.splits)}; local copy: datasets.{spec.name}.data.local_copy"
                   + (f" or ${spec.env_var}" if spec.env_var else ""))
        typer.echo(f"    to get it: {spec.how_to_get}")


@app.command()
def methods(verbose: VerboseOpt = False):
    """The registered methods (benchmark.methods and --method name them)."""
    from bench.methods import METHODS

    for name, method in METHODS.items():
        typer.echo(f"{name}: {method.title}")


@app.command()
def predict(
    images: Annotated[Path, typer.Argument(help="Folder of images (png/jpg).")],
    out: Annotated[Path, typer.Argument(help="Folder for <name>.png label maps and <name>_overlay.png.")],
    seed: Annotated[int, typer.Option(help="Which trained model (runs/<dataset>/acseg/seed<N>).")] = 0,
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
    verbose: VerboseOpt = False,
):
    """Segment a folder of images with a trained ACSeg model: label PNGs and colour overlays.

    Label values are the model's class ids; where the model has been evaluated, they are mapped to the dataset's
    classes by that evaluation's Hungarian matching (an unsupervised model has no names of its own).
    """
    cfg = _config(params, dataset, set_, device)
    _arithmetic(cfg, ["acseg"])
    from bench.predict import predict_folder

    written = _guard(predict_folder, cfg, seed, images, out)
    typer.echo(f"wrote {written} label maps and overlays to {out}")


@app.command()
def generators(seed: SeedOpt = None, dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"),
               set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False,
               verbose: VerboseOpt = False):
    """Concept generators (ACSeg's ACG, per-image k-means, adaptive k-means, spectral) through ACSeg's own concept
    classifier: mIoU, oracle mIoU, concept retrieval top-1/top-5, concepts per image, images/s, FLOPs per image."""
    cfg = _config(params, dataset, set_, device)
    _arithmetic(cfg, ["acseg"])
    from bench.concept_study import run_generators

    typer.echo(str(_guard(run_generators, cfg, _seeds(cfg, seed), progress=not quiet)))


if __name__ == "__main__":
    app()
