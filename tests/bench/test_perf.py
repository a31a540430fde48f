"""`acseg-bench perf` on a tiny synthetic dataset with a random backbone: the CSV has exactly its columns and every
required measure, ratios are the ratios of the measured rates, the real cache is untouched. No timing asserted."""

import csv
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.perf import REQUIRED, Measure, ratio, repro_rows, steps_per_second, write_report

runner = CliRunner()


@pytest.fixture(scope="module")
def perf_run(tmp_path_factory):
    """A params file for the synthetic dataset (random ViT, 56x70, tiny ACSeg and STEGO), its feature caches,
    and one `acseg-bench perf` run on it."""
    import os

    from bench import data as data_mod
    from bench.config import load_config
    from bench.features import ensure_features
    from tests.conftest import write_synthetic_dataset

    tmp = tmp_path_factory.mktemp("perf")
    root = tmp / "synth"
    write_synthetic_dataset("synthetic_perf", root)
    from tests.conftest import PARAMS

    params = yaml.safe_load(PARAMS.read_text())
    params["benchmark"]["datasets"] = ["synthetic_perf"]
    params["datasets"] = {"synthetic_perf": {"data": {"local_copy": str(root)}}}
    params["backbone"].update(weights="random", weights_sha256=None)
    params["features"].update(height=56, width=70, cache_dir=str(tmp / "cache"), batch_size=2)
    params["acseg"].update(prototypes=3, depth=1, width=32, heads=2, mlp_width=64)
    params["acseg"]["train"].update(batch_size=2, pixel_samples=8, warmup_steps=1)
    params["stego"].update(knn=2, knn_draw=1, batch_size=2, feature_samples=2, neg_samples=1)
    params["crf"]["workers"] = 1
    params["run"].update(runs_dir=str(tmp / "runs"), tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(tmp / "params.yaml")
    for split in ("train", "val"):
        ensure_features(cfg, split, progress=False)
    cache_before = sorted(str(p.relative_to(tmp)) for p in (tmp / "cache").rglob("*"))
    result = runner.invoke(app, ["perf", "--params", str(tmp / "params.yaml"), "--images", "2", "--memory-images",
                                 "1", "--steps", "2", "--warmup-steps", "1", "--repeats", "1", "--min-seconds",
                                 "0", "--out", str(tmp / "reports"), "--repro-timing", str(tmp / "absent.json"),
                                 "--quiet"], env={**os.environ})
    yield tmp, result, cache_before
    data_mod.DATASETS.pop("synthetic_perf", None)


def _csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, {row["measure"]: row for row in reader}


def test_csv_has_its_columns_and_every_required_measure(perf_run):
    tmp, result, _ = perf_run
    assert result.exit_code == 0, result.output
    columns, rows = _csv(tmp / "reports/performance.csv")
    assert columns == ["measure", "value", "unit"]
    assert set(REQUIRED) <= set(rows)
    for name in REQUIRED:
        value = float(rows[name]["value"])
        assert math.isfinite(value) and value > 0, name
    assert "dvc_repro_cold_s" not in rows  # no timing file: not invented


def test_ratios_are_the_ratios_of_the_measured_rates(perf_run):
    tmp, _, _ = perf_run
    _, rows = _csv(tmp / "reports/performance.csv")
    v = {k: float(r["value"]) for k, r in rows.items()}
    approx = lambda x: pytest.approx(x, rel=1e-4)  # noqa: E731 (values are written with 6 significant digits)
    # pipeline time per image / bare time per image = bare rate / pipeline rate
    assert v["feature_overhead_ratio"] == approx(v["features_bare_timm_images_per_s"] / v["features_pipeline_images_per_s"])
    assert v["concept_step_speedup_vs_kmeans"] == approx(v["concept_step_images_per_s"] / v["kmeans_per_image_images_per_s"])
    assert v["concept_step_speedup_vs_spectral"] == approx(v["concept_step_images_per_s"] / v["spectral_per_image_images_per_s"])
    assert v["concept_step_speedup_vs_sklearn_kmeans"] == approx(
        v["concept_step_images_per_s"] / v["kmeans_sklearn_ninit_auto_per_image_images_per_s"])
    assert v["concept_step_speedup_vs_sklearn_kmeans_ninit10"] == approx(
        v["concept_step_images_per_s"] / v["kmeans_sklearn_ninit_10_per_image_images_per_s"])
    assert v["eval_peak_rss_ratio_2x_split"] == approx(v["eval_peak_rss_mb_2x"] / v["eval_peak_rss_mb_1x"])
    assert rows["feature_overhead_ratio"]["unit"] == "x" and rows["eval_peak_rss_mb_1x"]["unit"] == "MB"


def test_markdown_says_how_it_was_made_and_the_real_cache_is_untouched(perf_run):
    tmp, _, cache_before = perf_run
    md = (tmp / "reports/performance.md").read_text()
    assert "acseg-bench perf --images 2 --memory-images 1" in md and "torch threads" in md and "device cpu" in md
    assert "untrained model of the configured size" in md  # no runs/acseg/seed0/model.pt in this folder
    assert "bash pipelines/time_repro.sh" in md  # how to get the dvc repro timings
    assert "| feature_overhead_ratio |" in md and "in batches of 8" in md
    assert "- the concept step >= 20x faster than per-image k-means:" in md
    assert "vs scikit-learn's KMeans with 10 restarts" in md and ("x, met" in md or "x, NOT met" in md)
    assert sorted(str(p.relative_to(tmp)) for p in (tmp / "cache").rglob("*")) == cache_before
    from bench.datasets import DATASETS

    assert not [name for name in DATASETS if "perf-first" in name]


def test_repro_timings_are_copied_with_their_provenance(tmp_path):
    timing = tmp_path / "repro_timing.json"
    timing.write_text(json.dumps({"cold_s": 2156.0, "warm_s": 9.5, "commit": "abc1234", "date": "2026-01-01",
                                  "command": "dvc repro --force"}))
    rows = repro_rows(timing) + [Measure("x_per_s", 2.0, "images/s"), Measure("y_per_s", 4.0, "images/s")]
    rows.append(ratio("x_vs_y", rows[2], rows[3]))
    assert repro_rows(tmp_path / "absent.json") == []
    csv_path, md_path = write_report(rows, tmp_path / "out", "acseg-bench perf", {"cpu": "test"})
    _, table = _csv(csv_path)
    assert float(table["dvc_repro_cold_s"]["value"]) == 2156.0 and float(table["dvc_repro_warm_s"]["value"]) == 9.5
    assert float(table["x_vs_y"]["value"]) == 0.5
    md = md_path.read_text()
    assert "abc1234" in md and "2026-01-01" in md and "time_repro.sh" not in md


def test_steps_are_timed_after_the_warm_up_by_the_first_optimizer():
    # two optimizers (STEGO's head and probe) step each step; the head's (first) steps at t = 0, 1, 3, 6, 10
    stamps = [(1, 0.0), (2, 0.1), (1, 1.0), (2, 1.1), (1, 3.0), (2, 3.1), (1, 6.0), (2, 6.1), (1, 10.0), (2, 10.1)]
    assert steps_per_second(stamps, warmup=2, steps=3) == pytest.approx(3 / (10.0 - 1.0))
    with pytest.raises(ValueError, match="warm-up"):
        steps_per_second(stamps, warmup=0, steps=3)
