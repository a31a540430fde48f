"""`acseg-bench`: the command line. DVC stages call these same commands.

Every command reads params.yaml (``--params``), optionally a named preset (``--preset paper``), then
``--set section.field=value`` overrides; heavy libraries are imported only inside commands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible benchmark and ablation harness for ACSeg (CVPR 2023).")
baseline_app = typer.Typer(no_args_is_help=True, help="Baselines, evaluated exactly like ACSeg.")
app.add_typer(baseline_app, name="baseline")

ParamsOpt = Annotated[Path, typer.Option("--params", help="DVC params file to read.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help="Named variant over the params: paper, tiny.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override, e.g. -s acseg.prototypes=10 (repeatable).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda[:N] (falls back to cpu with a message).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="One seed (default: every seed in run.seeds).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
CrfOpt = Annotated[bool, typer.Option("--crf", help="Dense-CRF post-processing (params section crf); results "
                                      "go to the run's crf/ folder with crf=true.")]


def _config(params: Path, preset: str | None, sets: list[str] | None, device: str | None = None):
    from bench.config import ConfigError, load_config

    overrides = list(sets or [])
    if device:
        overrides.append(f"run.device={device}")
    try:
        return load_config(params, overrides=overrides, preset=preset)
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
    from bench.train import TrainingDiverged

    try:
        return fn(*args, **kwargs)
    except (DatasetError, WeightsError, ConfigError, TrainingDiverged, FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def fetch(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None):
    """Download (or take a local copy of) the dataset and verify every file against the checksum manifest."""
    from bench.runs import run_fetch

    cfg = _config(params, preset, set_)
    record = _guard(run_fetch, cfg)
    typer.echo(f"verified {record['title']}: {record['splits_present']} (absent: {record['splits_absent']}) "
               f"-> {cfg.data.manifest_out}")


@app.command()
def features(
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split(s) to extract (default: train and eval).")] = None,
    params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False,
):
    """Extract backbone features into the cache (once per backbone, weights, feature type, size, dataset, split)."""
    from bench.runs import run_features

    cfg = _config(params, preset, set_, device)
    for s in split or sorted({cfg.data.train_split, cfg.data.cluster_split, cfg.data.eval_split}):
        typer.echo(f"{s}: {_guard(run_features, cfg, s, progress=not quiet)}")


@app.command()
def train(seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None,
          set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False):
    """Train ACSeg's concept generator on cached features, then fit its concept classifier."""
    from bench.runs import run_train

    cfg = _config(params, preset, set_, device)
    for s in [seed] if seed is not None else cfg.run.seeds:
        typer.echo(f"seed {s}: {_guard(run_train, cfg, s, progress=not quiet)}")


def _evaluate(method: str, seed, params, preset, set_, device, quiet, crf: bool = False, train_first: bool = False):
    from bench.runs import run_evaluate, run_train_stego

    cfg = _config(params, preset, set_, device)
    for s in [seed] if seed is not None else cfg.run.seeds:
        if train_first:
            typer.echo(f"{method} seed {s}: trained -> {_guard(run_train_stego, cfg, s, progress=not quiet)}")
        m = _guard(run_evaluate, cfg, method, s, progress=not quiet, crf=crf)
        typer.echo(f"{method}{' + CRF' if crf else ''} seed {s}: mIoU {m['miou']:.2f}  acc {m['acc']:.2f}  "
                   f"({m['dataset_title']} {m['split']})"
                   + (f"; over-clustering K'={m['overcluster_k']} (majority matching, a separate metric): mIoU "
                      f"{m['miou_overcluster']:.2f}" if "miou_overcluster" in m else ""))


@app.command()
def evaluate(seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None,
             set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False, crf: CrfOpt = False,
             method: Annotated[str, typer.Option("--method", help="acseg, kmeans or stego (already trained).")] = "acseg"):
    """Evaluate trained models on the evaluation split (Hungarian-matched mIoU and accuracy)."""
    from bench.runs import METHODS

    if method not in METHODS:
        _fail(f"unknown method {method!r}; choose one of {list(METHODS)}")
    _evaluate(method, seed, params, preset, set_, device, quiet, crf)


@baseline_app.command("kmeans")
def baseline_kmeans(seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None,
                    set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False, crf: CrfOpt = False):
    """DINO k-means: K = classes over cached patch features, evaluated like ACSeg (the floor)."""
    _evaluate("kmeans", seed, params, preset, set_, device, quiet, crf)


@baseline_app.command("stego")
def baseline_stego(seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None,
                   set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False, crf: CrfOpt = False):
    """STEGO on cached features: train the head and cluster probe (last step kept), then evaluate like ACSeg.

    With --crf, the already trained model of each seed is evaluated with the dense CRF (no retraining).
    Published weight/shift sets: --preset stego_cocostuff (the default values) or stego_cityscapes.
    """
    _evaluate("stego", seed, params, preset, set_, device, quiet, crf, train_first=not crf)


@baseline_app.command("stego-knn")
def baseline_stego_knn(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None):
    """STEGO's k-NN positives: top-k images by cosine of pooled features over the training split (cached)."""
    from bench.runs import run_stego_knn

    cfg = _config(params, preset, set_)
    typer.echo(str(_guard(run_stego_knn, cfg)))


@app.command()
def diagnose(seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None,
             set_: SetOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False):
    """Where ACSeg falls short: modularity and majority-class oracle of its concepts vs per-image k-means.

    The oracle uses labels to judge partitions only; nothing is tuned or selected with it.
    """
    from bench.runs import run_diagnose

    cfg = _config(params, preset, set_, device)
    for s in [seed] if seed is not None else cfg.run.seeds:
        r = _guard(run_diagnose, cfg, s, progress=not quiet)
        typer.echo(f"seed {s}: modularity {r['modularity_learned']:.3f} (per-image k-means "
                   f"{r['modularity_per_image_kmeans']:.3f}); oracle mIoU {r['oracle_miou_learned']:.1f} "
                   f"(per-image k-means {r['oracle_miou_per_image_kmeans']:.1f}); concepts/image "
                   f"{r['concepts_per_image_mean']:.2f}")


AxisOpt = Annotated[Optional[str], typer.Option(help="Comma list of values.")]


@app.command()
def ablate(
    prototypes: AxisOpt = None, loss: AxisOpt = None, depth: AxisOpt = None,
    self_attention: Annotated[Optional[str], typer.Option("--self-attention", help="on,off")] = None,
    feature: AxisOpt = None, backbone: AxisOpt = None,
    classifier: Annotated[Optional[str], typer.Option(
        help="region_mean,region_mean_centred,crops (crops: each concept's box re-encoded by the backbone, "
             "classifier.crop_size).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="K of the concept classifier, comma list.")] = None,
    sweep_names: Annotated[Optional[str], typer.Option(
        "--sweep", help="Run sweeps of params.yaml's ablations.sweeps by name (comma list; 'all': every one, "
                        "as `dvc repro` does), at the ablations' budget ablations.train_steps.")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma list of seeds.")] = "0,1,2",
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1,
                                                help="Points trained at once (default: ablations.jobs).")] = None,
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Where the points' run folders go.")] = "runs/ablations",
    out: Annotated[Optional[Path], typer.Option("--out", help="Tidy CSV, one row per run "
                                                "(default: <runs-dir>/<axes>.csv).")] = None,
    params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False,
):
    """Sweep ACSeg's choices: each axis a comma list (e.g. --prototypes 5,10,20), several axes = their grid,
    every point x seed trained (ablations.train_steps steps) and evaluated on the cached features, one MLflow
    parent run with a nested run each. Points already run with the same config are reused.
    """
    from bench.ablate import budget, parse_axes, run_sweeps, sweep
    from bench.config import ConfigError

    cfg = _config(params, preset, set_, device)
    raw = {"prototypes": prototypes, "loss": loss, "depth": depth, "self_attention": self_attention,
           "feature": feature, "backbone": backbone, "classifier": classifier, "classes": classes}
    if sweep_names is not None:
        if any(raw.values()):
            _fail("give either --sweep (sweeps from the params) or axes, not both")
        names = [] if sweep_names == "all" else [n.strip() for n in sweep_names.split(",") if n.strip()]
        for path in _guard(run_sweeps, cfg, names, progress=not quiet, echo=typer.echo, jobs=jobs):
            typer.echo(str(path))
        return
    try:
        axes = parse_axes(raw)
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except (ConfigError, ValueError) as e:
        _fail(f"{e}")
    name = "+".join(axes)
    path = _guard(sweep, _guard(budget, cfg), axes, seed_list, runs_dir, out or Path(runs_dir) / f"{name}.csv",
                  progress=not quiet, echo=typer.echo, jobs=jobs or cfg.ablations.jobs, name=name)
    typer.echo(f"{len(seed_list)} seeds x {len(axes)} axes -> {path}")


@app.command()
def ablations(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None):
    """Collect every sweep of ablations.sweeps into reports/ablations.csv (one tidy row per run)."""
    from bench.ablate import collect_ablations

    cfg = _config(params, preset, set_)
    typer.echo(str(_guard(collect_ablations, cfg)))


@app.command()
def report(
    ablations: Annotated[str, typer.Option(help="Ablations CSV (skipped when absent; 'none': not used).")] = "reports/ablations.csv",
    out: Annotated[Path, typer.Option("--out", help="Folder of the report (README.md + figures/).")] = Path("reports"),
    params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None,
):
    """Build reports/README.md and its figures from the results and ablations CSVs (nothing recomputed)."""
    from bench.runs import run_report

    cfg = _config(params, preset, set_)
    typer.echo(str(_guard(run_report, cfg, None if ablations.lower() in ("", "none") else ablations, out)))


@app.command()
def results(params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None):
    """Collect every evaluated run into reports/results.csv (one tidy row per run)."""
    from bench.runs import collect_results

    cfg = _config(params, preset, set_)
    typer.echo(str(_guard(collect_results, cfg)))


@app.command()
def repro(
    params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None,
    dvc_yaml: Annotated[Path, typer.Option("--dvc-yaml", help="The pipeline whose stages are run.")] = Path("dvc.yaml"),
    dry: Annotated[bool, typer.Option("--dry", help="Print the stage commands only.")] = False,
):
    """Run every stage of dvc.yaml, in order, with these params (e.g. --params params/paper_voc2012.yaml).

    `dvc repro` reads params.yaml only; this runs the same stages for any params file, preset and overrides.
    """
    import shlex

    from bench.pipeline import run_pipeline, stage_commands

    cfg = _config(params, preset, set_)
    extra = ["--params", str(params)] + (["--preset", preset] if preset else [])
    for s in set_ or []:
        extra += ["--set", s]
    commands = _guard(stage_commands, dvc_yaml, cfg, extra)
    if dry:
        for c in commands:
            typer.echo(f"[{c.stage}] acseg-bench {shlex.join(c.argv)}")
        return
    try:
        run_pipeline(commands, echo=typer.echo)
    except RuntimeError as e:
        _fail(str(e))
    typer.echo(f"done: results in {cfg.run.results_csv}, runs in {cfg.run.runs_dir}/")


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
    params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
    quiet: QuietOpt = False,
):
    """Speed and memory on the cached features and images: feature pipeline vs bare timm, concept step vs per-image
    k-means and spectral clustering, training steps/s, evaluation images/s (with and without CRF), peak memory."""
    import shlex

    import torch

    from bench.features import resolve_device
    from bench.perf import machine, run_suite, write_report

    cfg = _config(params, preset, set_, device)
    if threads:
        torch.set_num_threads(threads)
    rows = _guard(run_suite, cfg, images=images, memory_images=memory_images, steps=steps, warmup_steps=warmup_steps,
                  repeats=repeats, min_seconds=min_seconds, progress=not quiet, repro_timing=repro_timing)
    argv = ["acseg-bench", "perf", "--images", str(images), "--memory-images", str(memory_images), "--steps",
            str(steps), "--warmup-steps", str(warmup_steps), "--repeats", str(repeats), "--min-seconds", f"{min_seconds:g}"]
    argv += (["--threads", str(threads)] if threads else []) + (["--device", device] if device else [])
    argv += (["--params", str(params)] if str(params) != "params.yaml" else []) + (["--preset", preset] if preset else [])
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
                   f"{list(spec.splits)}; local copy: data.local_copy" + (f" or ${spec.env_var}" if spec.env_var else ""))
        typer.echo(f"    to get it: {spec.how_to_get}")


@app.command()
def predict(
    images: Annotated[Path, typer.Argument(help="Folder of images (png/jpg).")],
    out: Annotated[Path, typer.Argument(help="Folder for <name>.png label maps and <name>_overlay.png.")],
    seed: Annotated[int, typer.Option(help="Which trained model (runs/acseg/seed<N>).")] = 0,
    params: ParamsOpt = Path("params.yaml"), preset: PresetOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
):
    """Segment a folder of images with a trained ACSeg model: label PNGs and colour overlays.

    Label values are the model's class ids; where the model has been evaluated, they are mapped to the
    dataset's classes by that evaluation's Hungarian matching (an unsupervised model has no names of its own).
    """
    from bench.predict import predict_folder

    cfg = _config(params, preset, set_, device)
    written = _guard(predict_folder, cfg, seed, images, out)
    typer.echo(f"wrote {written} label maps and overlays to {out}")


if __name__ == "__main__":
    app()
