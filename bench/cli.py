"""`acseg-bench`: the command line. DVC stages call these same commands (dvc.yaml); DVC runs the pipeline.

Every command reads params.yaml (``--params``), selects a dataset (``--dataset``; default: the first of
``benchmark.datasets``), then ``--set section.field=value`` overrides; heavy libraries are imported only inside
commands, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
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


def _config(params: Path, dataset: str | None, sets: list[str] | None, device: str | None = None):
    from bench.config import ConfigError, load_config

    overrides = list(sets or []) + ([f"run.device={device}"] if device else [])
    try:
        return load_config(params, dataset=dataset, overrides=overrides)
    except ConfigError as e:
        _fail(str(e))


def _fail(message: str):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _guard(fn, *args, **kwargs):
    """Run a step; expected failures (bad data, weights, params) become one clear line, exit code 2."""
    from bench.backbones import WeightsError
    from bench.config import ConfigError
    from bench.data import DatasetError
    from bench.methods import TrainingDiverged

    try:
        return fn(*args, **kwargs)
    except (DatasetError, WeightsError, ConfigError, TrainingDiverged, FileNotFoundError, ValueError) as e:
        _fail(str(e))


def _seeds(cfg, seed: int | None) -> list[int]:
    return [seed] if seed is not None else cfg.benchmark.seeds


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def fetch(dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None):
    """Download (or take a local copy of) a dataset and verify every file; writes data/<dataset>.json."""
    from bench.runs import manifest_path, run_fetch

    cfg = _config(params, dataset, set_)
    record = _guard(run_fetch, cfg)
    typer.echo(f"verified {record['title']}: {record['splits_present']} (absent: {record['splits_absent']}) "
               f"-> {manifest_path(cfg.data.dataset)}")


@app.command()
def features(
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split(s) to extract (default: train, "
                                                       "cluster and eval splits).")] = None,
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False,
):
    """Extract backbone features into the cache (once per backbone, weights, feature type, size, dataset, split)."""
    from bench.runs import run_features

    cfg = _config(params, dataset, set_, device)
    for s in split or sorted({cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split}):
        typer.echo(f"{s}: {_guard(run_features, cfg, s, progress=not quiet)}")


@app.command()
def train(method: MethodOpt = "acseg", seed: SeedOpt = None, dataset: DatasetOpt = None,
          params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
          quiet: QuietOpt = False):
    """Fit a method on the cached features (ACSeg: concept generator, then concept classifier; k-means: centroids;
    STEGO: head and cluster probe, last step kept)."""
    from bench.methods import get_method
    from bench.runs import run_train

    cfg = _config(params, dataset, set_, device)
    _guard(get_method, method)
    for s in _seeds(cfg, seed):
        typer.echo(f"{cfg.data.dataset} {method} seed {s}: {_guard(run_train, cfg, method, s, progress=not quiet)}")


@app.command()
def evaluate(
    method: Annotated[Optional[str], typer.Option("--method", help="A registered method (default: every method of "
                                                  "benchmark.methods).")] = None,
    seed: SeedOpt = None, crf: CrfOpt = False, dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False,
):
    """Evaluate trained runs on the evaluation split (Hungarian-matched mIoU and accuracy). Several runs (no --method
    or no --seed) are evaluated in one pass: features and labels read once, each image's CRF kernels built once."""
    from bench.methods import get_method
    from bench.runs import evaluate_runs

    cfg = _config(params, dataset, set_, device)
    methods = [method] if method else cfg.benchmark.methods
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
             set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False):
    """Where ACSeg falls short: modularity and majority-class oracle of its concepts vs per-image k-means.

    The oracle uses labels to judge partitions only; nothing is tuned or selected with it.
    """
    from bench.runs import run_diagnose

    cfg = _config(params, dataset, set_, device)
    for s in _seeds(cfg, seed):
        r = _guard(run_diagnose, cfg, s, progress=not quiet)
        typer.echo(f"seed {s}: modularity {r['modularity_learned']:.3f} (per-image k-means "
                   f"{r['modularity_per_image_kmeans']:.3f}); oracle mIoU {r['oracle_miou_learned']:.1f} "
                   f"(per-image k-means {r['oracle_miou_per_image_kmeans']:.1f}); concepts/image "
                   f"{r['concepts_per_image_mean']:.2f}")


def _axes_help() -> str:
    from bench.ablate import AXES

    return "; ".join(f"--{name.replace('_', '-')}: {axis.title}" for name, axis in AXES.items())


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
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
    device: DeviceOpt = None, quiet: QuietOpt = False,
):
    """Sweep ACSeg's choices: each axis a comma list (e.g. --prototypes 5,10,20), several axes = their grid, every
    point x seed trained (ablations.train_steps steps) and evaluated on the cached features of ablations.dataset, one
    MLflow parent run with a nested run each. Points already run with the same config are reused. Axes: see
    `acseg-bench ablate --help-axes`."""
    from bench.ablate import budget, parse_axes, run_sweeps, sweep
    from bench.config import ConfigError

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
    if sweep_names is not None:
        if raw:
            _fail("give either --sweep (sweeps from the params) or axes, not both")
        names = [] if sweep_names == "all" else [n.strip() for n in sweep_names.split(",") if n.strip()]
        for path in _guard(run_sweeps, cfg, names, progress=not quiet, echo=typer.echo, jobs=jobs):
            typer.echo(str(path))
        return
    try:
        axes = parse_axes(raw)
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if seeds else cfg.benchmark.seeds
    except (ConfigError, ValueError) as e:
        _fail(f"{e}")
    name = "+".join(axes)
    path = _guard(sweep, _guard(budget, cfg), axes, seed_list, runs_dir, out or Path(runs_dir) / f"{name}.csv",
                  progress=not quiet, echo=typer.echo, jobs=jobs or cfg.ablations.jobs, name=name)
    typer.echo(f"{len(seed_list)} seeds x {len(axes)} axes -> {path}")


@app.command()
def ablations(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None):
    """Collect every sweep of ablations.sweeps into ablations.out_csv (one tidy row per run)."""
    from bench.ablate import collect_ablations

    cfg = _config(params, None, set_)
    typer.echo(str(_guard(collect_ablations, cfg)))


@app.command()
def results(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None):
    """Collect every evaluated run of the benchmark's datasets and methods into run.results_csv."""
    from bench.runs import collect_results

    cfg = _config(params, None, set_)
    typer.echo(str(_guard(collect_results, cfg)))


@app.command()
def report(
    ablations: Annotated[str, typer.Option(help="Ablations CSV (skipped when absent; 'none': not used).")] = "reports/ablations.csv",
    out: Annotated[Path, typer.Option("--out", help="Folder of the report (README.md + figures/).")] = Path("reports"),
    params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
):
    """Build reports/README.md and its figures from the results and ablations CSVs (nothing recomputed)."""
    from bench.runs import run_report

    cfg = _config(params, None, set_)
    typer.echo(str(_guard(run_report, cfg, None if ablations.lower() in ("", "none") else ablations, out)))


@app.command("params")
def compose_params(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides, e.g. experiment=paper_voc2012 "
                                                             "acseg.prototypes=5.")] = None,
    out: Annotated[Path, typer.Option("--out", help="The params file to write.")] = Path("params.yaml"),
    conf: Annotated[Path, typer.Option("--conf", help="The Hydra config folder.")] = Path("conf"),
):
    """Compose conf/ into params.yaml, exactly as `dvc exp run` does (for a plain `dvc repro` after editing conf/)."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(out, str(conf.resolve()), None, "config", str(Path(".dvc/hydra_plugins").resolve()),
                     list(overrides or []))
    _config(out, None, [])  # validated
    typer.echo(str(out))


@app.command()
def perf(
    images: Annotated[int, typer.Option("--images", help="Images for the feature, concept-step, clustering and "
                                        "evaluation-speed measures.")] = 24,
    memory_images: Annotated[int, typer.Option("--memory-images", help="N of the peak-memory measure (N and 2N "
                                               "training images, each evaluated in a fresh process).")] = 150,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps (ACSeg and STEGO).")] = 20,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Training steps before timing.")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", help="Feature extraction: best of this many rounds.")] = 2,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Fast measures (concept step, evaluation "
                                               "without CRF) repeat until this long.")] = 2.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch threads (default: torch's default).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder of performance.csv and performance.md.")] = Path("reports"),
    repro_timing: Annotated[Path, typer.Option("--repro-timing", help="dvc repro timings to copy in (written by "
                                               "pipelines/time_repro.sh), if present.")] = Path("reports/repro_timing.json"),
    dataset: DatasetOpt = None, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False,
):
    """Speed and memory on the cached features and images: feature pipeline vs bare timm, concept step vs per-image
    k-means and spectral clustering, training steps/s, evaluation images/s (with and without CRF), peak memory."""
    import shlex

    import torch

    from bench.features import resolve_device
    from bench.perf import machine, run_suite, write_report

    cfg = _config(params, dataset, set_, device)
    if threads:
        torch.set_num_threads(threads)
    rows = _guard(run_suite, cfg, images=images, memory_images=memory_images, steps=steps, warmup_steps=warmup_steps,
                  repeats=repeats, min_seconds=min_seconds, progress=not quiet, repro_timing=repro_timing)
    argv = ["acseg-bench", "perf", "--images", str(images), "--memory-images", str(memory_images), "--steps",
            str(steps), "--warmup-steps", str(warmup_steps), "--repeats", str(repeats), "--min-seconds", f"{min_seconds:g}"]
    argv += (["--threads", str(threads)] if threads else []) + (["--device", device] if device else [])
    argv += (["--dataset", dataset] if dataset else []) + (["--params", str(params)] if str(params) != "params.yaml" else [])
    argv += (["--out", str(out)] if out != Path("reports") else [])
    for s in set_ or []:
        argv += ["--set", s]
    csv_path, md_path = write_report(rows, out, shlex.join(argv), machine(resolve_device(cfg.run.device)))
    for r in rows:
        typer.echo(f"{r.measure}: {r.value:.4g} {r.unit}")
    typer.echo(f"-> {csv_path}, {md_path}")


@app.command()
def datasets():
    """The registered datasets: name, classes, where a local copy may be named, how to get each."""
    from bench.datasets import DATASETS

    for spec in DATASETS.values():
        typer.echo(f"{spec.name}: {spec.title}, {spec.n_classes} classes, void {spec.ignore_index}, splits "
                   f"{list(spec.splits)}; local copy: datasets.{spec.name}.data.local_copy"
                   + (f" or ${spec.env_var}" if spec.env_var else ""))
        typer.echo(f"    to get it: {spec.how_to_get}")


@app.command()
def methods():
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
):
    """Segment a folder of images with a trained ACSeg model: label PNGs and colour overlays.

    Label values are the model's class ids; where the model has been evaluated, they are mapped to the dataset's
    classes by that evaluation's Hungarian matching (an unsupervised model has no names of its own).
    """
    from bench.predict import predict_folder

    cfg = _config(params, dataset, set_, device)
    written = _guard(predict_folder, cfg, seed, images, out)
    typer.echo(f"wrote {written} label maps and overlays to {out}")


if __name__ == "__main__":
    app()
