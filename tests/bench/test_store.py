"""Run folders: every evaluation is tied to the model it evaluated, a model to the settings it was trained with, and a
run folder changes all at once or not at all.

Synthetic: the 56x70 dataset of tests/conftest.py with random cached features (tests/bench/test_robustness.py) and
k-means, the fastest method to fit.
"""

import errno
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench import store
from bench.cli import app
from bench.data import sha256_file
from bench.runs import collect_results, run_evaluate, run_train
from bench.store import RunError, load_fitted, run_dir
from tests.bench.test_robustness import config_overrides, make_config, no_tracking, write_features  # noqa: F401
from tests.conftest import PARAMS, dotlist

CPU = torch.device("cpu")


@pytest.fixture
def trained(tmp_path, synthetic_dataset, no_tracking):  # noqa: F811
    """k-means (k=2) trained and evaluated on random cached features of the synthetic dataset, seed 0."""
    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **{"benchmark.methods": ["kmeans"], "benchmark.datasets": ["synthetic"],
                                         "benchmark.crf_methods": ["kmeans"], "datasets.synthetic": {},
                                         "run.results_csv": str(tmp_path / "results.csv")})
    for split in ("train", "val"):
        write_features(cfg, split, spec, root)
    run_train(cfg, "kmeans", 0, progress=False)
    run_evaluate(cfg, "kmeans", 0, progress=False)
    return cfg, root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_model_records_its_training_config_and_weights_digest_and_metrics_record_the_model(trained):
    cfg, _ = trained
    out = run_dir(cfg, "kmeans", 0)
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["config_hash"] == cfg.hash() and saved["state_sha256"] == store.state_digest(saved["state_dict"])
    assert saved["training"]["kmeans.k"] == 2 and "crf.iterations" not in saved["training"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_sha256"] == sha256_file(out / "model.pt")
    assert metrics["model_config_hash"] == cfg.hash() and metrics["model_state_sha256"] == saved["state_sha256"]


def test_a_retrained_model_makes_the_old_metrics_stale_in_results(trained):
    cfg, _ = trained
    assert collect_results(cfg).is_file()  # consistent: the table is written
    retrained = cfg.model_copy(update={"kmeans": cfg.kmeans.model_copy(update={"n_init": 2})})
    run_train(retrained, "kmeans", 0, progress=False)  # into the same folder, evaluate skipped
    with pytest.raises(RunError, match=r"1 evaluation\(s\) no longer match their model.*seed0/metrics.json: .*"
                                       r"model.pt is not the model it evaluated"):
        collect_results(cfg)


def test_evaluating_a_model_under_another_training_config_is_refused_naming_the_keys(trained, tmp_path):
    cfg, root = trained
    other = make_config(tmp_path, root, **{"kmeans.k": 3, "kmeans.iters": 7})
    with pytest.raises(RunError, match=r"trained with other settings than the ones asked for: kmeans.iters=\d+ "
                                       r"\(asked: 7\); kmeans.k=2 \(asked: 3\)"):
        load_fitted(other, "kmeans", 0, CPU)
    # what only changes the evaluation is not a training setting
    load_fitted(make_config(tmp_path, root, **{"crf.iterations": 1, "run.device": "cpu"}), "kmeans", 0, CPU)

    sets = [a for o in dotlist({**config_overrides(tmp_path, root), "kmeans.k": 3}) for a in ("-s", o)]
    result = CliRunner().invoke(app, ["evaluate", "--params", str(PARAMS), "--dataset", "synthetic", "--method",
                                      "kmeans", "--seed", "0", *sets, "--quiet"])
    assert result.exit_code == 2, result.output
    assert "kmeans.k=2 (asked: 3)" in result.output and "Traceback" not in result.output


def test_a_failed_re_evaluation_leaves_the_old_run_folder_intact(trained, monkeypatch):
    import bench.runs

    cfg, _ = trained
    out = run_dir(cfg, "kmeans", 0)
    before = _files(out)

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(bench.runs, "save_examples", disk_full)  # after the figure and confusion.csv are written
    with pytest.raises(OSError, match="No space left"):
        run_evaluate(cfg, "kmeans", 0, progress=False)
    assert _files(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_a_run_folder_that_cannot_be_written_is_found_before_the_training(tmp_path, synthetic_dataset, monkeypatch,
                                                                           no_tracking):  # noqa: F811
    from bench.methods import get_method

    spec, root = synthetic_dataset
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cfg = make_config(tmp_path, root, **{"run.runs_dir": str(blocker / "runs")})
    write_features(cfg, "train", spec, root)
    fitted = []
    monkeypatch.setattr(type(get_method("kmeans")), "fit", lambda *a, **k: fitted.append(1))
    with pytest.raises(RunError, match=f"cannot write in {blocker}"):
        run_train(cfg, "kmeans", 0, progress=False)
    assert fitted == []

    monkeypatch.setattr(store, "MIN_FREE_BYTES", 1 << 62)  # a disk fuller than any
    with pytest.raises(RunError, match="MB free on its disk"):
        run_train(make_config(tmp_path, root), "kmeans", 0, progress=False)
    assert fitted == []


@pytest.mark.parametrize("damage", ["empty", "truncated", "altered weights"])
def test_a_damaged_model_file_is_one_clear_error(trained, damage):
    cfg, _ = trained
    path = run_dir(cfg, "kmeans", 0) / "model.pt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        saved = torch.load(path, weights_only=False)
        next(iter(saved["state_dict"].values())).add_(1.0)
        torch.save(saved, path)
    expected = {"empty": "is empty", "truncated": "is not a readable model file",
                "altered weights": "do not match their recorded digest"}[damage]
    with pytest.raises(RunError, match=f"model file {path} {'is corrupt: its weights ' if 'altered' in damage else ''}"
                                       f"{expected}.*acseg-bench train"):
        load_fitted(cfg, "kmeans", 0, CPU)


def test_updating_moves_every_file_in_or_none(tmp_path):
    folder = tmp_path / "run"
    with store.updating(folder) as stage:
        (stage / "a.csv").write_text("new a")
        (stage / "metrics.json").write_text("{}")
    assert _files(folder) == {"a.csv": b"new a", "metrics.json": b"{}"}
    with pytest.raises(KeyboardInterrupt), store.updating(folder) as stage:
        (stage / "a.csv").write_text("newer a")
        raise KeyboardInterrupt
    assert _files(folder) == {"a.csv": b"new a", "metrics.json": b"{}"} and len(list(folder.iterdir())) == 2
    killed = folder / ".staging-killed"  # what a SIGKILLed step leaves: removed by the next update
    killed.mkdir()
    (killed / "a.csv").write_text("half")
    with store.updating(folder) as stage:
        (stage / "a.csv").write_text("newest a")
    assert sorted(p.name for p in folder.iterdir()) == ["a.csv", "metrics.json"]
