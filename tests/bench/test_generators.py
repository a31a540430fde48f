"""The concept-generator study (bench/generators.py) on the synthetic dataset of tests/conftest.py: random cached
features, a tiny trained ACSeg for the ACG rows; and its report on constructed tables."""

import math

import pandas as pd
import pytest
import torch

from tests.conftest import make_config as base_config
from bench.concept_study import read_generator_results, run_generators
from bench.generators import GENERATORS
from bench.report.concepts import compare_with_reference, concept_claim, generator_table, generators_report_lines
from tests.bench.test_robustness import GRID, make_config, write_features


@pytest.fixture
def no_tracking(monkeypatch):
    """These tests are not about MLflow: they do not pay for it."""
    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)


@pytest.fixture
def trained(tmp_path, synthetic_dataset, no_tracking):
    """The synthetic dataset's cached features and ACSeg trained for seeds 0 and 1 (the ACG rows need them)."""
    from bench.runs import run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    write_features(cfg, "train", spec, root)
    write_features(cfg, "val", spec, root)
    for seed in (0, 1):
        run_train(cfg, "acseg", seed, progress=False)
    return cfg


def settings(tmp_path, **changes):
    return base_config().generators.model_copy(update={"out_dir": str(tmp_path / "generators"), **changes})


def test_every_registered_concept_generator_returns_one_concept_id_per_patch(tmp_path, trained):
    from bench.features import load_features
    from bench.methods.base import feature_mean

    feats = load_features(trained, "val")
    batch = feats.take([0, 1]).features
    mean = feature_mean(load_features(trained, "train"), trained.acseg.centre)
    assert set(GENERATORS) >= {"acg", "kmeans", "kmeans_adaptive", "spectral"}
    for name, generator in GENERATORS.items():
        step = generator.build(trained, settings(tmp_path), 0, torch.device("cpu"), mean)
        ids = step.assign(batch)
        assert ids.shape == (2, GRID[0] * GRID[1]) and ids.dtype == torch.long, name
        assert 0 <= int(ids.min()) and int(ids.max()) < step.slots, name


def test_the_study_writes_every_generator_and_seed_with_its_measures_and_a_report(tmp_path, trained):
    s = settings(tmp_path)
    out = run_generators(trained, seeds=[0, 1], progress=False, settings=s)
    assert out == tmp_path / "generators" / "synthetic.csv"
    df = read_generator_results(s.out_dir)
    assert list(df.generator.unique()) == s.names and len(df) == 2 * len(s.names)
    for column in ("miou", "oracle_miou", "retrieval_top1", "retrieval_top5"):
        assert df[column].between(0, 100).all(), column
    assert (df.oracle_miou >= df.miou - 1e-6).all()  # the majority class of every concept is the best it can get
    assert (df.images_per_s > 0).all() and (df.flops_per_image > 0).all() and (df.n_images == 2).all()
    assert df[df.generator == "kmeans"].concepts_per_image.eq(3).all()  # k = acseg.prototypes on 20 patches
    assert df[df.generator == "spectral"].flops_per_image.iloc[0] > 9 * 20 ** 3  # its eigendecomposition counted
    again = run_generators(trained, seeds=[0], progress=False, settings=s.model_copy(update={"names": ["kmeans"]}))
    rerun = pd.read_csv(again)
    first = df[(df.generator == "kmeans") & (df.seed == 0)].iloc[0]
    assert rerun.miou.iloc[0] == pytest.approx(first.miou) and rerun.retrieval_top1.iloc[0] == pytest.approx(
        first.retrieval_top1)  # deterministic for a seed

    figures = tmp_path / "figures"
    figures.mkdir()
    lines = generators_report_lines(df, figures)
    text = "\n".join(lines)
    assert "| ACSeg's ACG" in text and "(reference)" in text and "per-image spectral clustering" in text
    assert "the paper's concept claim" in text and (figures / "concept_retrieval_synthetic.png").is_file()


def study(acg_top1, kmeans_top1, spectral_top1=(40.0, 41.0, 42.0)):
    rows = []
    for generator, top1 in (("acg", acg_top1), ("kmeans", kmeans_top1), ("spectral", spectral_top1)):
        for seed, value in enumerate(top1):
            rows.append({"dataset": "camvid", "split": "val", "generator": generator, "seed": seed, "miou": 20 + seed,
                         "oracle_miou": 40.0 + seed, "retrieval_top1": value, "retrieval_top5": value + 3,
                         "concepts_per_image": 8.0, "images_per_s": 100.0, "flops_per_image": 2e9})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("acg,kmeans,verdict", [
    ((60.0, 61.0, 62.0), (45.0, 46.0, 44.5), "holds here"),
    ((40.0, 41.0, 40.5), (50.0, 51.5, 52.0), "does not hold here"),
    ((45.0, 52.0, 47.0), (47.0, 46.0, 49.0), "is not shown here"),
])
def test_the_verdict_in_plain_words_follows_the_significance_of_the_differences(acg, kmeans, verdict):
    df = study(acg, kmeans)
    sentence = concept_claim(df)
    assert verdict in sentence and "On CamVid-11 (SegNet split) val" in sentence and "57.8" in sentence


def test_each_difference_from_the_acg_comes_with_welchs_p():
    df = study((60.0, 61.0, 62.0), (45.0, 46.0, 44.5))
    comparison = compare_with_reference(df)
    row = comparison[(comparison.generator == "kmeans") & (comparison.measure == "retrieval_top1")].iloc[0]
    assert row.difference == pytest.approx(45.1666667 - 61.0) and row.p_value < 0.01
    assert math.isnan(comparison[comparison.generator == "acg"].p_value.iloc[0])
    table = generator_table(df)
    assert list(table.generator) == ["ACSeg's ACG", "per-image k-means", "per-image spectral clustering"]
    assert table["top-1 vs ACG"].iloc[0] == "(reference)" and table["top-1 vs ACG"].iloc[1].startswith("-15.83*")
    assert table["GFLOPs / image"].iloc[0] == "2"


def test_perf_rows_time_every_generator_on_the_same_features(tmp_path, trained):
    from bench.features import load_features
    from bench.perf import first_images, generator_perf_rows

    evaluated = first_images(load_features(trained, "val"), 2)
    rows = generator_perf_rows(trained, evaluated, load_features(trained, "train"), min_seconds=0.01,
                               settings=settings(tmp_path))
    names = [r.measure for r in rows]
    assert names == [f"generator_{g}_{m}" for g in base_config().generators.names
                     for m in ("images_per_s", "flops_per_image")]
    assert all(r.value > 0 for r in rows)
