"""`acseg-bench perf` on a tiny synthetic dataset with a random backbone: the CSV has exactly its columns and every
required measure, ratios are the ratios of the measured rates, a split without a cache is extracted for the run
only, the real cache is untouched; the FLOP formulas against torch's FLOP counter; the k-means timed is the
pipeline's own (acseg.batched_kmeans through the study's generator); the layers (bench.timing under
bench.generators under bench.perf). No timing asserted."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.perf import PROFILE_PREFIX, REQUIRED, Measure, repro_rows, write_report
from bench.perf.concepts import concept_step, concept_step_flop_terms, kmeans_flop_terms, kmeans_iterations
from bench.timing import matmul_flops, ratio, steps_per_second

runner = CliRunner()


@pytest.fixture(scope="module")
def perf_params(tmp_path_factory):
    """A params file for the synthetic dataset (random ViT, 56x70, tiny ACSeg and STEGO) and its evaluation split's
    feature cache (the training split has none: the suite extracts what it needs for the run)."""
    from bench import data as data_mod
    from bench.schema import load_config
    from bench.features import ensure_features
    from tests.conftest import PARAMS, write_synthetic_dataset

    tmp = tmp_path_factory.mktemp("perf")
    root = tmp / "synth"
    write_synthetic_dataset("synthetic_perf", root)
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
    ensure_features(load_config(tmp / "params.yaml"), "val", progress=False)
    yield tmp
    data_mod.DATASETS.pop("synthetic_perf", None)


@pytest.fixture(scope="module")
def perf_run(perf_params):
    """One `acseg-bench perf` run on the synthetic params."""
    import os

    tmp = perf_params
    cache_before = sorted(str(p.relative_to(tmp)) for p in (tmp / "cache").rglob("*"))
    result = runner.invoke(app, ["perf", "--params", str(tmp / "params.yaml"), "--images", "2", "--memory-images",
                                 "1", "--steps", "2", "--warmup-steps", "1", "--repeats", "1", "--min-seconds",
                                 "0", "--out", str(tmp / "reports"), "--repro-timing", str(tmp / "absent.json"),
                                 "--quiet"], env={**os.environ})
    return tmp, result, cache_before


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
    profile = {k: float(r["value"]) for k, r in rows.items() if k.startswith(PROFILE_PREFIX)}
    assert {f"{PROFILE_PREFIX}{s}_ms_per_image" for s in ("total", "image_decoding", "vit_forward_features",
                                                          "cache_write", "other")} <= set(profile)
    stages = sum(v for k, v in profile.items() if not k.endswith("total_ms_per_image"))
    assert stages == pytest.approx(profile[f"{PROFILE_PREFIX}total_ms_per_image"], rel=1e-3)  # the stages add up


def test_ratios_are_the_ratios_of_the_measured_rates(perf_run):
    tmp, _, _ = perf_run
    _, rows = _csv(tmp / "reports/performance.csv")
    v = {k: float(r["value"]) for k, r in rows.items()}
    approx = lambda x: pytest.approx(x, rel=1e-4)  # noqa: E731 (values are written with 6 significant digits)
    # time ratios = inverse ratios of the rates
    bare = v["features_bare_timm_images_per_s"]
    assert v["feature_overhead_ratio"] == approx(bare / v["features_pipeline_images_per_s"])
    assert v["acseg_inference_overhead"] == approx(bare / v["acseg_inference_images_per_s"])
    assert v["concept_step_speedup_vs_sklearn_kmeans"] == approx(
        v["concept_step_images_per_s"] / v["sklearn_kmeans_per_image_images_per_s"])
    assert v["concept_step_speedup_vs_batched_kmeans"] == approx(
        v["concept_step_images_per_s"] / v["batched_kmeans_images_per_s"])
    assert v["eval_peak_rss_ratio_2x_split"] == approx(v["eval_peak_rss_mb_2x"] / v["eval_peak_rss_mb_1x"])
    assert rows["feature_overhead_ratio"]["unit"] == "x" and rows["eval_peak_rss_mb_1x"]["unit"] == "MB"
    assert rows["concept_step_gflop_per_image"]["unit"] == "GFLOP"


def test_markdown_says_how_it_was_made_and_the_real_cache_is_untouched(perf_run):
    tmp, _, cache_before = perf_run
    md = (tmp / "reports/performance.md").read_text()
    assert "acseg-bench perf --images 2 --memory-images 1" in md and "torch threads" in md and "device cpu" in md
    assert "Measured on **this CPU (" in md
    assert "untrained model of the configured size" in md  # no runs/.../acseg/seed0/model.pt in this folder
    assert "bash pipelines/time_repro.sh" in md  # how to get the dvc repro timings
    assert "| feature_overhead_ratio |" in md and "in batches of 8" in md
    for name, target in (("feature_overhead_ratio", 1.1), ("acseg_inference_overhead", 0.1),
                         ("eval_peak_rss_ratio_2x_split", 1.1)):
        assert f"- `{name}` " in md and f"(target <= {target}): **" in md
    assert "## Where the feature pipeline's time goes" in md and "| vit_forward_features |" in md
    assert "| scikit-learn KMeans per image, current defaults (the paper's comparison) |" in md
    assert "(its FLOPs per image / the concept step's) x" in md
    assert "acseg.batched_kmeans.batched_kmeans(cosine=True" in md  # the pipeline's k-means, not a copy
    # the training split had no cache: its first images were extracted for the run, into a cache of its own
    assert "no feature cache of the split" in md and "its first 3 images extracted by this run" in md
    assert sorted(str(p.relative_to(tmp)) for p in (tmp / "cache").rglob("*")) == cache_before
    from bench.datasets import DATASETS

    assert not [name for name in DATASETS if "perf-first" in name]


def test_a_subset_dataset_is_its_first_images(perf_params):
    """The feature measure's subset (a regression: the dataset's bind once handed back the whole dataset, so the
    pipeline extracted the whole split while the rate divided by N)."""
    from bench.config import with_overrides
    from bench.schema import load_config
    from bench.data import SegmentationSplit, dataset_spec, locate
    from bench.perf.common import FirstImages, registered

    cfg = load_config(perf_params / "params.yaml")
    subset = FirstImages(dataset_spec(cfg), 1)
    with registered(subset):
        spec = dataset_spec(with_overrides(cfg, {"data.dataset": subset.name}))
        root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
        assert spec.name == subset.name and len(SegmentationSplit(spec, root, "val")) == 1
        assert len(SegmentationSplit(dataset_spec(cfg), root, "val")) == 2


def test_repro_timings_are_copied_with_their_provenance_and_processor(tmp_path):
    timing = tmp_path / "repro_timing.json"
    timing.write_text(json.dumps({"cold_s": 2156.0, "warm_s": 9.5, "commit": "abc1234", "date": "2026-01-01",
                                  "command": "dvc repro --force", "cpu": "Test CPU 9000"}))
    rows = repro_rows(timing) + [Measure("x_per_s", 2.0, "images/s"), Measure("y_per_s", 4.0, "images/s")]
    rows.append(ratio("x_vs_y", rows[2], rows[3]))
    assert repro_rows(tmp_path / "absent.json") == []
    csv_path, md_path = write_report(rows, tmp_path / "out", "acseg-bench perf", {"cpu": "Other CPU"},
                                     repro_cpu="Test CPU 9000")
    _, table = _csv(csv_path)
    assert float(table["dvc_repro_cold_s"]["value"]) == 2156.0 and float(table["dvc_repro_warm_s"]["value"]) == 9.5
    assert float(table["x_vs_y"]["value"]) == 0.5
    md = md_path.read_text()
    assert "abc1234" in md and "2026-01-01" in md and "time_repro.sh" not in md
    assert "measured on Test CPU 9000, not this run's processor (Other CPU)" in md


def test_steps_are_timed_after_the_warm_up_by_the_first_optimizer():
    # two optimizers (STEGO's head and probe) step each step; the head's (first) steps at t = 0, 1, 3, 6, 10
    stamps = [(1, 0.0), (2, 0.1), (1, 1.0), (2, 1.1), (1, 3.0), (2, 3.1), (1, 6.0), (2, 6.1), (1, 10.0), (2, 10.1)]
    assert steps_per_second(stamps, warmup=2, steps=3) == pytest.approx(3 / (10.0 - 1.0))
    with pytest.raises(ValueError, match="warm-up"):
        steps_per_second(stamps, warmup=0, steps=3)


# ------------------------------------------------------------------------------------------- FLOPs, k-means


@pytest.mark.parametrize("self_attention", [True, False])
def test_concept_step_flops_match_torchs_count_of_its_matrix_products(self_attention):
    from acseg.concept_generator import ConceptGenerator
    from acseg.model import ACSeg

    torch.manual_seed(0)
    b, h, w, d = 2, 6, 8, 48
    model = ACSeg(ConceptGenerator(d, 5, depth=2, width=16, heads=4, mlp_width=24, self_attention=self_attention),
                  torch.zeros(d), 4)
    features = torch.randn(b, h, w, d)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # gradients on and the math attention: nn.MultiheadAttention's products as matmuls torch's counter sees (its
    # fused inference path and the CPU flash kernel are not counted)
    with sdpa_kernel(SDPBackend.MATH):
        counted = matmul_flops(lambda: concept_step(model, features))
    matmul, elementwise = concept_step_flop_terms(model.generator, h * w, d)
    assert counted == b * matmul
    assert 0 < elementwise < 0.5 * matmul


@pytest.mark.parametrize("restarts", [1, 3])
def test_kmeans_flops_match_torchs_count_of_the_pipelines_batched_kmeans(restarts):
    """The formula is acseg.batched_kmeans' (cosine), and the Lloyd iterations read back from torch's count are
    the ones it ran (a negative tol: no image ever converges, every iteration runs)."""
    from acseg.batched_kmeans import batched_kmeans

    torch.manual_seed(0)
    b, n, d, k, iters = 3, 40, 16, 4, 7
    x = torch.randn(b, n, d)
    counted = matmul_flops(lambda: batched_kmeans(x, k, iters=iters, n_init=restarts, cosine=True, tol=-1.0))
    assert counted == b * kmeans_flop_terms(n, d, k, iters * restarts, restarts)[0]
    assert kmeans_iterations(counted / b, n, d, k, restarts) == iters * restarts
    # converged early: fewer iterations read back, at least one per restart
    early = matmul_flops(lambda: batched_kmeans(x, k, iters=50, n_init=restarts, cosine=True))
    assert restarts <= kmeans_iterations(early / b, n, d, k, restarts) <= 50 * restarts


def test_the_kmeans_timed_is_the_study_generators_which_runs_acseg_batched_kmeans(monkeypatch):
    """No private copy: the suite's k-means step is the registry's ``kmeans`` generator, whose call lands in
    acseg.batched_kmeans.batched_kmeans with cosine=True and the generators.kmeans settings."""
    from types import SimpleNamespace

    import acseg.generators
    from bench.perf.concepts import kmeans_step
    from tests.conftest import make_config

    cfg = make_config()
    calls = []
    real = acseg.generators.batched_kmeans
    monkeypatch.setattr(acseg.generators, "batched_kmeans", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    step = kmeans_step(cfg, SimpleNamespace(feature_mean=torch.zeros(8)), torch.device("cpu"))
    ids = step.assign(torch.randn(2, 4, 5, 8))
    assert ids.shape == (2, 20) and len(calls) == 1
    s = cfg.generators.kmeans
    assert calls[0] == {"seed": 0, "iters": s.iters, "n_init": s.n_init, "cosine": True}


def test_the_layers_timing_under_generators_under_perf():
    """bench.timing imports nothing of the harness; the concept generators and their study do not import
    bench.perf (no cycle: perf sits above them and reuses their code)."""
    code = ("import sys, bench.timing; assert not [m for m in sys.modules if m.startswith('bench.') "
            "and m != 'bench.timing'], sorted(sys.modules)\n"
            "import bench.generators, bench.concept_study; assert 'bench.perf' not in sys.modules\n"
            "import bench.perf")
    subprocess.run([sys.executable, "-c", code], check=True)
