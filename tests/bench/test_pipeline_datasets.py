"""The paper configurations (conf/experiment) run as real DVC experiments, end to end through results and report,
on the fixture datasets (tests/bench/dataset_fixtures.py) with a random ViT-S/8 at 48x48 and tiny models: `dvc exp
run -S experiment=paper_<dataset> -S +testing=tiny` in a temporary git repository holding the project's pipeline,
one repository per configuration, the three run side by side.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.bench.dataset_fixtures import make_cityscapes, make_cocostuff, make_voc
from tests.conftest import ROOT

MAKERS = {"voc2012": make_voc, "cocostuff27": make_cocostuff, "cityscapes27": make_cityscapes}
LOCATION = {"voc2012": "ACSEG_VOC_DIR", "cocostuff27": "ACSEG_COCOSTUFF_DIR", "cityscapes27": "ACSEG_CITYSCAPES_DIR"}
# VOC's background split keeps about a third of the concepts of random features: VOC gets more training images.
# The concept classifier needs at least K (21 or 27) concept regions over the cluster split: 6 images x 8 prototypes
# (the ablated point) leave room; 6 x 3 did not (18 < 27, rejected as collapsed concepts).
TRAIN_IMAGES = {"voc2012": 12, "cocostuff27": 6, "cityscapes27": 6}

TINY = """# @package _global_
# The tests' few-second settings over any experiment (a random ViT-S/8 at 48x48, one seed, tiny models).
backbone: {weights: random, weights_sha256: null, weights_label: random ViT-S/8 (test)}
features: {height: 48, width: 48, batch_size: 4}
benchmark: {seeds: [0], methods: [acseg, kmeans, stego, dsm], crf_methods: [acseg, stego]}
acseg:
  prototypes: 12
  depth: 1
  width: 32
  heads: 2
  mlp_width: 64
  train: {steps: 5, batch_size: 2, warmup_steps: 1, log_every: 1, pixel_samples: 0}
  classifier: {n_init: 1}
kmeans: {n_init: 1}
stego: {steps: 5, batch_size: 2, knn: 2, knn_draw: 2, feature_samples: 3, neg_samples: 1, log_every: 1,
        calibration_batches: 2, kmeans_n_init: 1}
dsm: {segment_n_init: 1, n_init: 1}
generators: {names: [acg, kmeans]}
ablations: {train_steps: 5, jobs: 1, sweeps: {prototypes: {prototypes: [8]}}}
run: {device: cpu, track: false}  # MLflow costs ~4 s a stage; tests/bench/test_pipeline.py and test_cluster.py track
"""


def run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout


def _repository(base: Path, data: Path, dvc: list[str]) -> tuple[Path, dict]:
    """A git repository holding the pipeline (dvc.yaml, conf/, the code its stages depend on), DVC with Hydra
    composition, and an environment whose PATH has this interpreter's acseg-bench."""
    repo = base / "project"
    repo.mkdir(parents=True)
    for name in ("acseg", "bench", "conf"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "conf" / "testing").mkdir()
    (repo / "conf" / "testing" / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_AUTHOR_NAME": "test",
           "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@example.invalid", "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db",
           "OMP_NUM_THREADS": "1"}  # three repositories run side by side on the machine's cores
    for name, make in MAKERS.items():
        env[LOCATION[name]] = str(data / name)
    run(["git", "init", "-q"], repo, env)
    run([*dvc, "init", "-q"], repo, env)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\n/cache/\n/data/raw/\n")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "pipeline"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """Every paper configuration run as a DVC experiment, each in its own repository, all at once."""
    dvc = [sys.executable, "-m", "dvc"]
    data = tmp_path_factory.mktemp("data")
    for name, make in MAKERS.items():
        make(data / name, train=TRAIN_IMAGES[name])
    repos = {name: _repository(tmp_path_factory.mktemp(name), data, dvc) for name in MAKERS}
    running = {name: subprocess.Popen([*dvc, "exp", "run", "-S", f"experiment=paper_{name}", "-S", "+testing=tiny",
                                       "--name", f"paper-{name}"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, (repo, env) in repos.items()}
    outputs = {name: process.communicate()[0] for name, process in running.items()}
    return {name: (*repos[name], dvc, running[name].returncode, outputs[name]) for name in MAKERS}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_paper_configuration_runs_as_a_dvc_experiment(name, experiments):
    repo, env, dvc, code, output = experiments[name]
    assert code == 0, output[-8000:]
    df = pd.read_csv(repo / "reports/results.csv")
    assert (df.dataset == name).all() and (df.split == "val").all()
    assert set(zip(df.method, df.crf)) == {(m, False) for m in ("acseg", "kmeans", "stego", "dsm")} | {
        ("acseg", True), ("stego", True)}
    assert df.miou.between(0, 100).all() and (df.backbone == "vit_small_patch8_224.dino").all()
    metrics = json.loads((repo / f"runs/{name}/acseg/seed0/metrics.json").read_text())
    assert metrics["n_images"] == 3 and metrics["n_clusters"] == {"voc2012": 21, "cocostuff27": 27,
                                                                  "cityscapes27": 27}[name]
    ablations = pd.read_csv(repo / "reports/ablations.csv")  # the paper's sweep: prototypes, with the default point
    assert sorted(ablations.value.astype(int)) == [8, 12] and (ablations.dataset == name).all()
    generators = pd.read_csv(repo / f"reports/generators/{name}.csv")
    assert set(generators.generator) == {"acg", "kmeans"}
    report = (repo / "reports/README.md").read_text()
    assert "## Ablations (" in report and (repo / f"reports/figures/per_class_iou_{name}.png").is_file()
    assert run([*dvc, "status"], repo, env).strip().endswith("Data and pipelines are up to date.")

    shown = json.loads(run([*dvc, "exp", "show", "--json"], repo, env))
    experiments_shown = {e["name"]: e for baseline in shown for e in (baseline.get("experiments") or [])
                         for e in [e["revs"][0]] if e.get("name")}
    assert f"paper-{name}" in experiments_shown, shown
    data = experiments_shown[f"paper-{name}"]["data"]
    params = data["params"]["params.yaml"]["data"]
    assert params["benchmark"]["datasets"] == [name] and params["acseg"]["train"]["steps"] == 5
    assert "reports/results_summary.json" in data["metrics"]


def test_dvc_dag_reads_as_the_readme_describes(experiments):
    repo, env, dvc, *_ = experiments["voc2012"]
    run(["git", "checkout", "-q", "--", "params.yaml"], repo, env)  # the default benchmark's params again
    dot = run([*dvc, "dag", "--dot"], repo, env)
    for edge in ('"fetch@camvid" -> "features@camvid-train"', '"features@camvid-train" -> "train@camvid-acseg-0"',
                 '"train@camvid-stego-0" -> "evaluate@camvid-stego-0"',
                 '"train@camvid-kmeans-1" -> "evaluate-crf@camvid"', '"evaluate@camvid-acseg-2" -> "results"',
                 '"train@camvid-acseg-0" -> "generators@camvid"', '"results" -> "report"',
                 '"ablate-default" -> "ablate@prototypes"', '"ablations" -> "report"'):
        assert edge in dot, edge
