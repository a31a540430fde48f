"""The whole pipeline through the CLI on a handful of real CamVid images with the real DINOv2 weights."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from tests.conftest import WEIGHTS_FILE, WEIGHTS_SHA256, shared_paths

ROOT = Path(__file__).parents[2]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def workdir(tmp_path, monkeypatch, mini_camvid):
    """A params file for camvid_mini at a small resolution with a tiny ACSeg, in a temp cwd."""
    spec, root = mini_camvid
    _, weights_dir = shared_paths()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["benchmark"].update(datasets=[spec.name], seeds=[0])
    params["datasets"] = {spec.name: {"data": {"local_copy": str(root)}}}
    params["ablations"]["dataset"] = spec.name
    params["backbone"].update(weights=WEIGHTS_FILE, weights_sha256=WEIGHTS_SHA256, weights_dir=str(weights_dir))
    params["features"].update(height=112, width=154, cache_dir=str(tmp_path.parent / "shared-cache"))
    params["acseg"].update(prototypes=4, depth=1, width=32, heads=2, mlp_width=64)
    params["acseg"]["train"].update(steps=6, batch_size=2, warmup_steps=1, log_every=2, pixel_samples=64)
    params["acseg"]["classifier"].update(n_classes=4, n_init=2)  # restarts: 2, not the default's 50
    params["kmeans"].update(k=4, max_points=5000, n_init=2)
    for section in ("stego", "stego_kmeans", "stego_published"):
        params[section].update(knn=3, knn_draw=2, steps=4, batch_size=4, feature_samples=3, neg_samples=2, log_every=2,
                               calibration_batches=2, kmeans_n_init=2)
    params["run"].update(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    params["ablations"].update(train_steps=6, jobs=1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_end_to_end_cli_with_tracking(workdir):
    assert "absent: ['test']" in invoke("fetch")
    assert (workdir / "data/camvid_mini.json").is_file()
    invoke("features", "--quiet")
    invoke("train", "--quiet")
    out = invoke("evaluate", "--method", "acseg", "--quiet")
    assert "acseg seed 0: mIoU" in out
    invoke("train", "--method", "kmeans", "--quiet")
    invoke("evaluate", "--method", "kmeans", "--quiet")
    assert "oracle mIoU" in invoke("diagnose", "--quiet")
    diag = json.loads((workdir / "runs/camvid_mini/acseg/seed0/diagnostics.json").read_text())
    assert -0.5 <= diag["modularity_learned"] <= 1 and sum(diag["concepts_per_image_hist"].values()) == 4
    invoke("results")
    df = pd.read_csv(workdir / "reports/results.csv")
    assert {"dataset", "split", "method", "backbone", "crf", "seed", "miou", "acc"} <= set(df.columns)
    assert sorted(df.method) == ["acseg", "kmeans"] and (df.split == "val").all() and (~df.crf).all()
    assert df.miou.between(0, 100).all() and df.acc.between(0, 100).all()
    metrics = json.loads((workdir / "runs/camvid_mini/acseg/seed0/metrics.json").read_text())
    assert metrics["weights_sha256"] == WEIGHTS_SHA256 and 1 <= metrics["concepts_per_image_mean"] <= 4
    assert (workdir / "runs/camvid_mini/acseg/seed0/qualitative.png").stat().st_size > 0

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["acseg-bench"])
    assert len(runs) == 4  # train and evaluate, acseg and kmeans
    evaluated = runs[runs["tags.mlflow.runName"] == "evaluate-camvid_mini-acseg-seed0"].iloc[0]
    for tag in ("git_commit", "backbone", "weights_sha256", "dataset", "split", "seed"):
        assert evaluated[f"tags.{tag}"]
    assert evaluated["tags.weights_sha256"] == WEIGHTS_SHA256
    assert evaluated["metrics.miou"] == pytest.approx(metrics["miou"])
    assert evaluated["params.acseg.prototypes"] == "4"

    # predict: a folder of images -> label PNGs + overlays at the images' size
    from PIL import Image

    images = workdir / "imgs"
    images.mkdir()
    src = mini_root(workdir) / "val"
    for p in sorted(src.iterdir())[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    invoke("predict", str(images), str(workdir / "pred"))
    label = Image.open(workdir / "pred" / sorted(src.iterdir())[0].name)
    assert label.size == (480, 360) and label.mode == "L"
    assert (workdir / "pred" / (sorted(src.iterdir())[0].stem + "_overlay.png")).exists()


def mini_root(workdir: Path) -> Path:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    return Path(params["datasets"]["camvid_mini"]["data"]["local_copy"])


def test_same_config_and_seed_give_identical_metrics(workdir):
    invoke("fetch")
    invoke("features", "--quiet")
    results = []
    for _ in range(2):
        invoke("train", "--quiet")
        invoke("evaluate", "--method", "acseg", "--quiet")
        results.append(json.loads((workdir / "runs/camvid_mini/acseg/seed0/metrics.json").read_text()))
    assert results[0]["miou"] == results[1]["miou"] and results[0]["acc"] == results[1]["acc"]
    assert results[0]["mapping"] == results[1]["mapping"]


def test_second_run_reuses_the_feature_cache(workdir, monkeypatch):
    invoke("fetch")
    invoke("features", "--quiet")
    import bench.features

    def fail(*a, **k):
        raise AssertionError("the backbone was loaded again instead of reusing the cache")

    monkeypatch.setattr(bench.features, "load_backbone", fail)  # what an extraction calls
    invoke("features", "--quiet")


def test_invalid_parameter_via_cli_is_one_clear_line(workdir):
    result = runner.invoke(app, ["train", "--set", "acseg.prototypes=1"])
    assert result.exit_code == 2
    assert "invalid parameter acseg.prototypes=1" in result.output


def test_missing_weights_via_cli(workdir):
    result = runner.invoke(app, ["features", "--set", "backbone.weights=missing.safetensors",
                                 "--set", "features.height=126"])
    assert result.exit_code == 2 and "'missing.safetensors' not found" in result.output


def test_each_results_file_gets_its_own_summary(workdir):
    invoke("fetch")
    invoke("features", "--quiet")
    invoke("train", "--method", "kmeans", "--quiet")
    invoke("evaluate", "--method", "kmeans", "--quiet")
    invoke("results")
    invoke("results", "--set", "run.results_csv=reports/other.csv")
    assert (workdir / "reports/results_summary.json").is_file() and (workdir / "reports/other_summary.json").is_file()


def test_stego_and_crf_rows_through_the_cli(workdir):
    invoke("fetch")
    invoke("features", "--quiet")
    invoke("train", "--method", "stego", "--quiet")
    assert "stego seed 0: mIoU" in invoke("evaluate", "--method", "stego", "--quiet")
    assert "stego + CRF seed 0: mIoU" in invoke("evaluate", "--method", "stego", "--crf", "--quiet")
    invoke("train", "--method", "kmeans", "--quiet")
    assert "kmeans + CRF seed 0: mIoU" in invoke("evaluate", "--method", "kmeans", "--crf", "--quiet")
    invoke("train", "--quiet")
    assert "acseg + CRF seed 0: mIoU" in invoke("evaluate", "--method", "acseg", "--crf", "--quiet")
    invoke("results")
    df = pd.read_csv(workdir / "reports/results.csv")
    rows = set(zip(df.method, df.crf))
    assert rows == {("stego", False), ("stego", True), ("kmeans", True), ("acseg", True)}
    assert df.miou.between(0, 100).all()
    crf = json.loads((workdir / "runs/crf/camvid_mini/stego/seed0/metrics.json").read_text())
    assert crf["crf"] is True and crf["method"] == "stego"
    stego = df[(df.method == "stego") & ~df.crf].iloc[0]
    assert stego.steps_per_second > 0  # training speed travels with the row


def test_stego_needs_a_trained_model_for_crf_and_enough_images_for_knn(workdir):
    invoke("fetch")
    invoke("features", "--quiet")
    result = runner.invoke(app, ["evaluate", "--method", "stego", "--crf", "--quiet"])
    assert result.exit_code == 2 and "no trained model at runs/camvid_mini/stego/seed0/model.pt" in result.output
    result = runner.invoke(app, ["train", "--method", "stego", "--set", "stego.knn=30", "--set", "stego.knn_draw=7"])
    assert result.exit_code == 2 and "k=30 neighbours need more than 30 images" in result.output
    result = runner.invoke(app, ["evaluate", "--method", "nope"])
    assert result.exit_code == 2 and "unknown method 'nope'; known: ['acseg', 'dsm', 'kmeans', 'stego'" in result.output
