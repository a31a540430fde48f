"""The whole pipeline (fetch -> features -> ACSeg -> evaluation) on each fixture dataset, through the CLI and the
stages of dvc.yaml (`acseg-bench repro`), with a fixed random ViT-S/8 at 48x48 and the tiny preset."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import bench.pipeline
from acseg.metrics import hungarian_miou, overclustering_miou
from bench.cli import app
from bench.datasets import get_spec
from tests.bench.dataset_fixtures import make_cityscapes, make_cocostuff, make_voc

ROOT = Path(__file__).parents[2]
MAKERS = {"voc2012": make_voc, "cocostuff27": make_cocostuff, "cityscapes27": make_cityscapes}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def in_process(monkeypatch):
    """Run each stage in this process (a fresh interpreter per stage costs seconds of imports)."""
    commands = []

    def run(argv):
        commands.append(argv)
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        return 0

    monkeypatch.setattr(bench.pipeline, "run_subprocess", run)
    return commands


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow store for the module's runs (creating a store costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def repro_args(name: str, local: Path, tmp_path: Path, tracking_uri: str, *more: str) -> list[str]:
    sets = [f"data.dataset={name}", f"data.local_copy={local}", f"data.manifest_out=data/{name}.json",
            "backbone.name=vit_small_patch8_224.dino", "backbone.weights=random", "backbone.weights_label=",
            "features.height=48", "features.width=48", f"features.cache_dir={tmp_path}/cache", "run.seeds=0",
            "acseg.prototypes=12", "classifier.n_init=1", "kmeans.n_init=1", f"run.tracking_uri={tracking_uri}",
            *more]
    return ["repro", "--params", str(ROOT / "params.yaml"), "--dvc-yaml", str(ROOT / "dvc.yaml"), "--preset", "tiny",
            *[a for s in sets for a in ("-s", s)]]


# VOC runs with its background split and both over-clustering metrics (K' > 21 classes); with random features
# the background split keeps about a third of the concepts, so VOC gets 12 training images.
EXTRA = {"voc2012": ["classifier.background=cls_attention", "classifier.overcluster_k=22", "kmeans.overcluster_k=40"]}
TRAIN_IMAGES = {"voc2012": 12, "cocostuff27": 6, "cityscapes27": 6}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_every_stage_runs_on_each_dataset(name, tmp_path, monkeypatch, in_process, tracking_uri):
    local = MAKERS[name](tmp_path / "official", train=TRAIN_IMAGES[name])
    monkeypatch.chdir(tmp_path)
    out = invoke(*repro_args(name, local, tmp_path, tracking_uri, *EXTRA.get(name, [])))
    stages = [argv[0] if argv[0] != "baseline" else argv[1] for argv in in_process]
    assert stages == ["fetch", "features", "features", "features", "features", "train", "evaluate", "diagnose",
                      "kmeans", "stego-knn", "stego", "evaluate", "evaluate", "evaluate", "results", "ablate", "ablate",
                      "ablate", "ablations", "report"], out
    assert [argv[argv.index("--sweep") + 1] for argv in in_process if "--sweep" in argv] == ["default", "loss", "feature"]
    assert [argv[argv.index("--method") + 1] for argv in in_process if "--crf" in argv] == ["acseg", "kmeans", "stego"]
    spec = get_spec(name)
    record = json.loads((tmp_path / f"data/{name}.json").read_text())
    assert record["dataset"] == name and record["splits_present"] == {"train": TRAIN_IMAGES[name], "val": 3}
    for method in ("acseg", "kmeans"):
        run = tmp_path / f"runs/{method}/seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["dataset"] == name and metrics["n_images"] == 3 and math.isfinite(metrics["miou"])
        assert sorted(metrics["per_class_iou"]) == sorted(spec.class_names) and metrics["n_clusters"] == spec.n_classes
        # the main column: Hungarian (one-to-one) matching of K = classes clusters
        assert metrics["miou"] == pytest.approx(hungarian_miou(np.loadtxt(run / "confusion.csv", delimiter=",")).miou)
        if name != "voc2012":
            assert "miou_overcluster" not in metrics  # over-clustering only when asked for
            continue
        # the separate over-clustering column: K' > classes clusters, majority (many-to-one) matching
        k = 22 if method == "acseg" else 40
        confusion = np.loadtxt(run / "confusion_overcluster.csv", delimiter=",")
        assert confusion.shape == (k, 21) and metrics["overcluster_k"] == k
        assert metrics["overcluster"]["matching"] == "majority (many-to-one)"
        assert metrics["miou_overcluster"] == pytest.approx(overclustering_miou(confusion).miou)
    df = pd.read_csv(tmp_path / "reports/results.csv")
    assert set(zip(df.method, df.crf)) == {(m, c) for m in ("acseg", "kmeans", "stego") for c in (False, True)}
    assert (df.dataset == name).all()
    report = (tmp_path / "reports/README.md").read_text()
    assert "## Main table" in report and "## Ablations (ACSeg)" in report and "## Qualitative comparison" in report
    ablations = pd.read_csv(tmp_path / "reports/ablations.csv")  # the tiny preset's sweeps, each with the default
    assert sorted(zip(ablations.axis, ablations.value)) == [("feature", "keys"), ("feature", "tokens"),
                                                           ("loss", "modularity"), ("loss", "soft_modularity")]
    if name == "voc2012":
        assert {"overcluster_k", "miou_overcluster", "acc_overcluster"} <= set(df.columns)
        summary = json.loads((tmp_path / "reports/results_summary.json").read_text())["rows"]
        assert all("miou_overcluster_mean" in row for row in summary)


def test_repro_dry_lists_the_stages_with_the_params(tmp_path):
    out = invoke("repro", "--params", str(ROOT / "params/paper_voc2012.yaml"), "--dvc-yaml", str(ROOT / "dvc.yaml"),
                 "--dry")
    lines = out.splitlines()
    assert lines[0] == f"[fetch] acseg-bench fetch --params {ROOT / 'params/paper_voc2012.yaml'}"
    assert sum(line.startswith("[train@") for line in lines) == 3 and lines[-1].startswith("[report]")


def test_unknown_dataset_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fetch", "--params", str(ROOT / "params.yaml"), "-s", "data.dataset=imagenet"])
    assert result.exit_code == 2 and "unknown dataset 'imagenet'; available: [" in result.output
    assert all(f"'{name}'" in result.output for name in ("camvid", "voc2012", "cocostuff27", "cityscapes27"))
