"""Ablation sweeps: axes parse into points x seeds, bad values are clear errors, and a real sweep on a handful of
CamVid images writes tidy rows, nests its MLflow runs and reuses points it already has."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.ablate import ALIASES, grid, parse_axes, point_config
from bench.cli import app
from bench.config import ConfigError
from bench.schema import load_config
from tests.bench.test_pipeline import invoke, workdir  # noqa: F401 (the fixture)
from tests.conftest import PARAMS, make_config

runner = CliRunner()


def test_prototypes_parse_into_three_points_and_seeds_multiply_them():
    axes = parse_axes({"prototypes": "5,10,20", "loss": None})
    points = grid(axes)
    assert [p.label for p in points] == ["prototypes=5", "prototypes=10", "prototypes=20"]
    assert [p.value for p in points] == ["5", "10", "20"] and {p.axis for p in points} == {"prototypes"}
    assert len(points) * len([0, 1, 2]) == 9


def test_several_axes_are_their_grid():
    points = grid(parse_axes({"depth": "1,3", "self_attention": "on,off"}))
    assert [p.label for p in points] == ["depth=1,self_attention=on", "depth=1,self_attention=off",
                                         "depth=3,self_attention=on", "depth=3,self_attention=off"]
    assert points[1].axis == "depth+self_attention" and points[1].value == "1+off"


@pytest.mark.parametrize("raw, message", [
    ({"loss": "modularity,kmeans_style"}, "--loss: unknown value 'kmeans_style'"),
    ({"prototypes": "5,ten"}, "--prototypes: 'ten' is not an integer"),
    ({"self_attention": "maybe"}, "'maybe' is not on/off"),
    ({"feature": "pixels"}, "--feature: unknown value 'pixels'"),
    ({"nope": "1"}, "unknown ablation axis 'nope'"),
    ({}, "nothing to sweep"),
])
def test_bad_values_are_clear_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_axes(raw)


def test_point_configs_change_exactly_their_parameters():
    cfg = make_config(tiny=False)
    (random_point,) = grid(parse_axes({"backbone": "random"}))
    changed = point_config(cfg, random_point, "runs/ablations", "backbone")
    assert changed.backbone.weights == "random" and changed.backbone.name == cfg.backbone.name
    assert changed.run.runs_dir == "runs/ablations/backbone/backbone=random"
    assert changed.hash() != cfg.hash() and changed.features == cfg.features
    (k1,) = grid(parse_axes({"prototypes": "1"}))
    with pytest.raises(ConfigError, match="ablation point prototypes=1: invalid parameter acseg.prototypes=1"):
        point_config(cfg, k1, "runs/ablations", "prototypes")


def test_every_sweep_includes_the_shared_default_point():
    cfg = make_config(tiny=False)
    points = grid(parse_axes({"backbone": "random"}), cfg)
    assert [p.value for p in points] == [cfg.backbone.name, "random"]  # the reference row comes first
    assert len(grid(parse_axes({"prototypes": f"2,{cfg.acseg.prototypes}"}), cfg)) == 2  # already there
    folders = {point_config(cfg, p, "runs/ablations", "x").run.runs_dir for p in
               [points[0], *grid(parse_axes({"loss": cfg.acseg.loss, "depth": str(cfg.acseg.depth)}))]}
    assert folders == {"runs/ablations/default"}  # one folder for the default, whichever sweep reaches it


def test_sweeps_come_from_the_params_and_unknown_names_are_clear_errors():
    from bench.ablate import run_sweeps

    cfg = make_config(**{"ablations.sweeps": {"depth": {"depth": [1, 3], "self_attention": ["on", "off"]}}})
    assert grid(parse_axes(cfg.ablations.sweeps["depth"]))[1].label == "depth=1,self_attention=off"
    with pytest.raises(ConfigError, match="unknown sweep"):
        run_sweeps(cfg, ["nope"])
    assert cfg.hash() == make_config().hash()  # the plan is not part of any run's identity
    assert set(ALIASES) >= {"prototypes", "loss", "depth", "self_attention", "feature", "backbone", "classifier"}


def test_unknown_loss_via_cli_is_one_clear_line():
    result = runner.invoke(app, ["ablate", "--params", str(PARAMS), "--loss", "modularity,nope"])
    assert result.exit_code == 2 and "--loss: unknown value 'nope'" in result.output


def test_a_real_sweep_writes_rows_nests_runs_and_reuses_points(workdir, monkeypatch):  # noqa: F811
    invoke("fetch")
    invoke("features", "--quiet")
    out = invoke("ablate", "--prototypes", "2,3", "--seeds", "0,1", "--quiet", "--out", "reports/ablations.csv")
    assert "prototypes=3 seed 1: mIoU" in out
    df = pd.read_csv(workdir / "reports/ablations.csv")
    assert {"dataset", "split", "axis", "value", "seed", "miou", "acc"} <= set(df.columns)
    assert len(df) == 6 and set(df.axis) == {"prototypes"} and sorted(set(df.value)) == [2, 3, 4]  # 4: default
    assert set(df[df["default"]].value) == {4}  # flagged for the report, which compares every value with it
    assert df.miou.between(0, 100).all() and (df.split == "val").all()
    assert (df.train_steps == load_config("params.yaml").ablations.train_steps).all()
    assert (df.dataset == "camvid_mini").all()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["acseg-bench"])
    (parent,) = runs[runs["tags.kind"] == "sweep"]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert len(nested) == 12  # train + evaluate for 3 points x 2 seeds

    import bench.ablate

    def fail(*a, **k):
        raise AssertionError("a point with metrics for the same config was trained again")

    monkeypatch.setattr(bench.ablate, "run_train", fail)  # what a sweep's point calls
    invoke("ablate", "--prototypes", "3", "--seeds", "1", "--quiet", "--out", "reports/again.csv")
    again = pd.read_csv(workdir / "reports/again.csv")
    assert again.miou.tolist() == df[df.value.isin([4, 3]) & (df.seed == 1)].miou.tolist()


def test_two_workers_share_one_feature_cache_and_give_the_serial_numbers(workdir, monkeypatch):  # noqa: F811
    invoke("fetch")
    invoke("features", "--quiet")
    serial = invoke("ablate", "--prototypes", "2,3", "--seeds", "0", "--quiet", "--runs-dir", "runs/serial")
    import bench.features

    def no_extraction(*a, **k):
        raise AssertionError("a worker computed features")

    monkeypatch.setattr(bench.features, "_extract", no_extraction)  # every cache exists: nobody extracts
    parallel = invoke("ablate", "--prototypes", "2,3", "--seeds", "0", "--quiet", "--runs-dir", "runs/parallel",
                      "--jobs", "2")
    a = pd.read_csv(workdir / "runs/serial/prototypes.csv")
    b = pd.read_csv(workdir / "runs/parallel/prototypes.csv")
    assert len(a) == 3 and a[["value", "miou", "acc"]].equals(b[["value", "miou", "acc"]])
    assert serial.count("mIoU") == parallel.count("mIoU") == 3


def _ensure_in_child(params: str, cache_dir: str, spec, split: str) -> int:
    """In a fresh process: ensure a split's features; 1 if this process extracted them, else 0."""
    import bench.features as f
    from bench.schema import load_config
    from bench.datasets import register_dataset

    register_dataset(spec)
    extracted = []
    original = f._extract
    f._extract = lambda *a, **k: extracted.append(1) or original(*a, **k)
    f.ensure_features(load_config(params, overrides=[f"features.cache_dir={cache_dir}"]), split, progress=False)
    return len(extracted)


def test_two_processes_asking_for_one_cache_entry_compute_it_once(workdir):  # noqa: F811
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench import cache
    from bench.datasets import get_spec

    invoke("fetch")
    cfg = load_config("params.yaml", overrides=[f"features.cache_dir={workdir / 'fresh-cache'}"])
    args = [str(workdir / "params.yaml"), cfg.features.cache_dir, get_spec(cfg.data.dataset), "val"]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = list(pool.map(_ensure_in_child, *[[a, a] for a in args]))
    assert sorted(counts) == [0, 1]  # one extracted, the other waited on the lock and read the entry
    assert cache.is_valid(cache.cache_dir(cfg, "val"), cache.expected_meta(cfg, "val"))


def test_a_crops_point_reencodes_the_concepts_and_changes_only_the_classifier(workdir):  # noqa: F811
    """classifier=crops: the same concepts (same generator), a classifier fitted on the backbone's [CLS] of each
    concept's re-encoded box, evaluated the same way."""
    import torch

    invoke("fetch")
    invoke("features", "--quiet")
    out = invoke("ablate", "--classifier", "crops", "--seeds", "0", "--quiet", "--runs-dir", "runs/abl",
                 "--out", "reports/crops.csv", "-s", "acseg.classifier.crop_size=56")
    assert "classifier=crops seed 0: mIoU" in out
    df = pd.read_csv(workdir / "reports/crops.csv")
    assert sorted(df.value) == ["crops", "region_mean"] and df.miou.between(0, 100).all()
    mean = torch.load(workdir / "runs/abl/default/camvid_mini/acseg/seed0/model.pt", weights_only=False)
    crops = torch.load(workdir / "runs/abl/classifier/classifier=crops/camvid_mini/acseg/seed0/model.pt",
                       weights_only=False)
    generator = [k for k in mean["state_dict"] if k.startswith("generator.")]
    assert all(torch.equal(mean["state_dict"][k], crops["state_dict"][k]) for k in generator)
    assert not torch.allclose(mean["state_dict"]["class_centroids"], crops["state_dict"]["class_centroids"])
    assert crops["config"]["acseg"]["classifier"]["regions"] == "crops"

    # predict on new images re-encodes their concepts' crops the same way (the saved model says how it was fitted)
    from pathlib import Path

    import yaml

    images = workdir / "imgs"
    images.mkdir()
    src = Path(yaml.safe_load((workdir / "params.yaml").read_text())["datasets"]["camvid_mini"]["data"]["local_copy"]) / "val"
    first = sorted(src.iterdir())[0]
    (images / first.name).write_bytes(first.read_bytes())
    invoke("predict", str(images), str(workdir / "pred"), "-s", "run.runs_dir=runs/abl/classifier/classifier=crops",
           "-s", "acseg.classifier.regions=crops", "-s", "acseg.classifier.crop_size=56")
    assert (workdir / "pred" / first.name).is_file()


def test_a_crop_size_off_the_patch_grid_is_a_clear_error(workdir):  # noqa: F811
    invoke("fetch")
    invoke("features", "--quiet")
    result = runner.invoke(app, ["ablate", "--classifier", "crops", "--seeds", "0", "--quiet", "--runs-dir",
                                 "runs/abl", "-s", "acseg.classifier.crop_size=50"])
    assert result.exit_code != 0 and "acseg.classifier.crop_size=50: must be a multiple of the patch size 14" in result.output


def test_a_stego_rule_sweep_varies_stegos_calibration_and_trains_stego():
    from bench.ablate import axes_method

    cfg = make_config(tiny=False)
    axes = parse_axes({"stego_rule": "50-50-80,70-70-90"})
    points = grid(axes, cfg)
    assert [p.value for p in points] == ["50-50-80", "70-70-90"] and axes_method(axes) == "stego"
    point = point_config(cfg, points[0], "runs/ablations", "stego_rule")
    assert (point.stego.repel_self, point.stego.repel_knn, point.stego.repel_rand) == (0.5, 0.5, 0.8)
    assert point.run.runs_dir == "runs/ablations/stego_rule/stego_rule=50-50-80"
    default = point_config(cfg, points[1], "runs/ablations", "stego_rule")
    assert default.run.runs_dir == "runs/ablations/stego_rule/stego_rule=70-70-90"  # not ACSeg's shared default
    with pytest.raises(ConfigError, match="a sweep varies one method"):
        axes_method(parse_axes({"stego_rule": "50-50-80", "prototypes": "5"}))
    with pytest.raises(ConfigError, match="not three percentages"):
        parse_axes({"stego_rule": "70-90"})
