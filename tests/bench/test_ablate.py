"""Ablation sweeps: axes parse into points x seeds, bad values are clear errors, and a real sweep on a handful of
CamVid images writes tidy rows, nests its MLflow runs and reuses points it already has."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.ablate import AXES, grid, parse_axes, point_config
from bench.cli import app
from bench.config import ConfigError, load_config
from tests.bench.test_pipeline import invoke, workdir  # noqa: F401 (the fixture)

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
    cfg = load_config(None, environment={})
    (random_point,) = grid(parse_axes({"backbone": "random"}))
    changed = point_config(cfg, random_point, "runs/ablations")
    assert changed.backbone.weights == "random" and changed.backbone.name == cfg.backbone.name
    assert changed.run.runs_dir == "runs/ablations/backbone=random"
    (k1,) = grid(parse_axes({"prototypes": "1"}))
    with pytest.raises(ConfigError, match="ablation point prototypes=1: invalid parameter acseg.prototypes=1"):
        point_config(cfg, k1, "runs/ablations")
    assert set(AXES) >= {"prototypes", "loss", "depth", "self_attention", "feature", "backbone", "classifier"}


def test_unknown_loss_via_cli_is_one_clear_line():
    result = runner.invoke(app, ["ablate", "--loss", "modularity,nope"])
    assert result.exit_code == 2 and "--loss: unknown value 'nope'" in result.output


def test_a_real_sweep_writes_rows_nests_runs_and_reuses_points(workdir, monkeypatch):  # noqa: F811
    invoke("fetch")
    invoke("features", "--quiet")
    out = invoke("ablate", "--prototypes", "2,3", "--seeds", "0,1", "--quiet")
    assert "prototypes=3 seed 1: mIoU" in out
    df = pd.read_csv(workdir / "reports/ablations.csv")
    assert {"dataset", "split", "axis", "value", "seed", "miou", "acc"} <= set(df.columns)
    assert len(df) == 4 and set(df.axis) == {"prototypes"} and sorted(set(df.value)) == [2, 3]
    assert df.miou.between(0, 100).all() and (df.split == "val").all()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["acseg-bench"])
    (parent,) = runs[runs["tags.kind"] == "sweep"]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert len(nested) == 8  # train + evaluate for 2 points x 2 seeds

    import bench.runs

    def fail(*a, **k):
        raise AssertionError("a point with metrics for the same config was trained again")

    monkeypatch.setattr(bench.runs, "run_train", fail)
    invoke("ablate", "--prototypes", "3", "--seeds", "1", "--quiet", "--out", "reports/again.csv")
    assert pd.read_csv(workdir / "reports/again.csv").miou.tolist() == df[(df.value == 3) & (df.seed == 1)].miou.tolist()
