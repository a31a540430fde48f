"""Failures leave nothing that reads as a result, and a rerun starts clean: an interrupted feature extraction, an
interrupted training, a diverging loss, and an MLflow store that cannot be reached (the results are kept).

Synthetic: the 56x70 dataset of tests/conftest.py with a random ViT (feature cache tests) or random cached
features written straight into the cache (training and evaluation tests), a one-block ACSeg.
(tests/bench/test_cache.py already covers write_entry on its own: an interrupted write and a half-written folder.)
"""

import json
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench import cache
from bench.cli import app
from bench.features import ensure_features, load_features
from tests.conftest import PARAMS, dotlist
from tests.conftest import make_config as base_config

GRID, DIM = (4, 5), 16


def config_overrides(tmp_path: Path, root: Path, **overrides) -> dict:
    return {
        "data.local_copy": str(root),
        "backbone.weights": "random", "backbone.weights_sha256": None,
        "features.height": 56, "features.width": 70, "features.batch_size": 2,
        "features.cache_dir": str(tmp_path / "cache"),
        "acseg.prototypes": 3, "acseg.classifier.n_classes": 2, "acseg.classifier.n_init": 1,
        "acseg.classifier.iters": 10, "acseg.train.steps": 4, "acseg.train.batch_size": 2,
        "acseg.train.warmup_steps": 1, "acseg.train.log_every": 1, "acseg.train.pixel_samples": 8,
        "kmeans.k": 2, "kmeans.n_init": 1, "crf.workers": 1,
        "run.runs_dir": str(tmp_path / "runs"), "run.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        **overrides,
    }


def make_config(tmp_path: Path, root: Path, **overrides):
    """The synthetic dataset (tests/conftest.py) with a one-block ACSeg and a random backbone."""
    return base_config("synthetic", **config_overrides(tmp_path, root, **overrides))


def write_features(cfg, split: str, spec, root: Path, poison: float | None = None, grids=None) -> list[str]:
    """Random cached features for a split's images (no backbone), optionally with one value set to ``poison``;
    ``grids``: each image's patch grid (default: all GRID)."""
    names = [s.name for s in spec.samples(root, split)]
    grids = torch.tensor(grids or [GRID] * len(names))
    patches = int((grids[:, 0] * grids[:, 1]).sum())
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(patches, DIM, generator=g)
    if poison is not None:
        feats[0, 0] = poison
    attention = torch.rand(patches, 2, generator=g)
    cache.write_entry(cache.cache_dir(cfg, split), {"features": feats.half(), "cls_attention": attention.half(),
                                                    "grids": grids},
                      {**cache.expected_meta(cfg, split), "weights_sha256": "random-test", "names": names})
    return names


@pytest.fixture
def no_tracking(monkeypatch):
    """Tests that are not about MLflow do not pay for it."""
    import bench.tracking

    monkeypatch.setattr(bench.tracking, "log_run", lambda *a, **k: None)


def outputs(runs: Path) -> list[str]:
    return sorted(str(p.relative_to(runs)) for p in runs.rglob("*") if p.is_file()) if runs.exists() else []


# ---------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_interrupted_extraction_leaves_no_valid_entry_and_a_rerun_writes_one(tmp_path, monkeypatch,
                                                                            synthetic_dataset, interruption):
    import safetensors.torch

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    path, meta = cache.cache_dir(cfg, "val"), cache.expected_meta(cfg, "val")
    real_save = safetensors.torch.save_file

    def dies_mid_write(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a safetensors file")
        raise interruption("interrupted while writing")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_mid_write)
    with pytest.raises(interruption):
        ensure_features(cfg, "val", progress=False)
    assert not cache.is_valid(path, meta)
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # the temporary folder is cleaned up
    with pytest.raises(FileNotFoundError, match="no feature cache for synthetic split 'val'"):
        load_features(cfg, "val")

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert ensure_features(cfg, "val", progress=False) == path and cache.is_valid(path, meta)
    feats = load_features(cfg, "val")
    assert feats.names == ["v0.png", "v1.png"] and feats.grids.tolist() == [[4, 5], [4, 5]]
    assert feats.rows.shape[0] == 2 * 4 * 5


def test_leftovers_of_a_killed_extraction_are_ignored_and_do_not_break_the_next_write(tmp_path, synthetic_dataset):
    """A process killed mid-write leaves its .tmp- folder (and possibly a lock file, or a half-written folder at
    the final name): none of them reads as valid, and the next extraction writes a valid entry."""
    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    path, meta = cache.cache_dir(cfg, "val"), cache.expected_meta(cfg, "val")
    path.parent.mkdir(parents=True)
    stale = path.parent / f".{path.name}.tmp-killed"
    stale.mkdir()
    (stale / "features.safetensors").write_bytes(b"partial")
    (stale / "meta.json").write_text(json.dumps({**meta, "names": ["v0.png"]}))  # even with a complete meta
    (path.parent / f".{path.name}.lock").write_text("")  # the lock file of the killed process
    path.mkdir()
    (path / "features.safetensors").write_bytes(b"partial")  # an entry with no meta.json
    assert not cache.is_valid(path, meta)

    ensure_features(cfg, "val", progress=False)
    assert cache.is_valid(path, meta)
    feats = load_features(cfg, "val")
    assert feats.names == ["v0.png", "v1.png"] and torch.isfinite(feats.rows.float()).all()


def _folder_config(tmp_path: Path, root: Path):
    from tests.conftest import make_config as repo_config

    return repo_config("folder", **{"data.local_copy": str(root), "data.keep_aspect": True,
                                    "backbone.name": "vit_small_patch8_224.dino", "backbone.weights": "random",
                                    "backbone.weights_sha256": None, "features.height": 32, "features.width": 32,
                                    "features.cache_dir": str(tmp_path / "cache"),
                                    "run.runs_dir": str(tmp_path / "runs")})


def test_other_data_under_the_same_name_is_never_served_from_the_cache(tmp_path, monkeypatch):
    """Finding 1: the same ids with other pixels, or another folder under the same dataset name, after fetch: the
    entry made from the old files is not served; extracting from files changed since fetch is refused."""
    import numpy as np
    from PIL import Image

    from bench.data import DatasetError, read_record
    from bench.runs import run_fetch
    from tests.bench.test_datasets_folder import make_folder

    monkeypatch.chdir(tmp_path)  # data/folder.json, the fetch record, is written here
    root = make_folder(tmp_path / "mine")
    cfg = _folder_config(tmp_path, root)
    run_fetch(cfg)
    ensure_features(cfg, "val", progress=False)
    before = load_features(cfg, "val").rows.clone()
    record = read_record("folder")

    image = root / "images" / "img3.jpg"  # a val image: same id, other pixels
    pixels = np.asarray(Image.open(image))
    Image.fromarray(255 - pixels).save(image)
    run_fetch(cfg)
    assert read_record("folder")["split_fingerprints"]["val"] != record["split_fingerprints"]["val"]
    assert read_record("folder")["split_fingerprints"]["train"] == record["split_fingerprints"]["train"]
    with pytest.raises(FileNotFoundError, match="made from other data than the fetch record's"):
        load_features(cfg, "val")
    ensure_features(cfg, "val", progress=False)
    after = load_features(cfg, "val").rows
    assert after.shape == before.shape and not torch.equal(after, before)

    Image.fromarray(pixels).save(image)  # changed again, fetch not run: an extraction would mislabel its entry
    with pytest.raises(DatasetError, match="the files of split 'val' changed since `acseg-bench fetch`"):
        _extract_again(cfg, "val")

    other = make_folder(tmp_path / "other")  # another folder, the same ids: its own fingerprints
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(other / "images" / "img3.jpg")
    cfg_other = _folder_config(tmp_path, other)
    run_fetch(cfg_other)
    assert not cache.matches(cache.cache_dir(cfg_other, "val"), cache.expected_meta(cfg_other, "val"))


def _extract_again(cfg, split: str) -> None:
    """The extraction as `features` runs it on a miss (the entry deleted first)."""
    import shutil

    shutil.rmtree(cache.cache_dir(cfg, split))
    ensure_features(cfg, split, progress=False)


def _cli(tmp_path: Path, root: Path, command: list[str], **overrides):
    sets = [a for o in dotlist(config_overrides(tmp_path, root, **overrides)) for a in ("-s", o)]
    return CliRunner().invoke(app, [*command, "--params", str(PARAMS), "--dataset", "synthetic", *sets, "--quiet"])


def test_a_truncated_entry_is_one_error_for_a_run_and_rebuilt_by_features(tmp_path, monkeypatch, synthetic_dataset,
                                                                         no_tracking):
    """Finding 2: a truncated features.safetensors: `train` says which entry and which command remakes it (no
    SafetensorError traceback), and `features` extracts it again instead of reporting a cache hit."""
    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    monkeypatch.chdir(tmp_path)
    write_features(cfg, "train", spec, root)
    path = cache.cache_dir(cfg, "train")
    file = path / "features.safetensors"
    file.write_bytes(file.read_bytes()[:64])
    result = _cli(tmp_path, root, ["train", "--method", "kmeans", "--seed", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"feature cache entry {path} is corrupt" in result.output
    assert "acseg-bench features --dataset synthetic --split train" in result.output
    assert outputs(Path(cfg.run.runs_dir)) == []

    result = _cli(tmp_path, root, ["features", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert cache.is_valid(path, cache.expected_meta(cfg, "train"))
    assert load_features(cfg, "train").rows.shape[0] == 3 * 4 * 5  # extracted again, by the random ViT


def test_a_bit_flipped_entry_is_found_before_any_metric_is_written(tmp_path, monkeypatch, synthetic_dataset,
                                                                  no_tracking):
    """Finding 2: the sign of every stored feature flipped in the val entry (same size, plausible values): evaluate
    stops before writing anything."""
    from bench.runs import run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        write_features(cfg, split, spec, root)
    run_train(cfg, "kmeans", 0, progress=False)
    file = cache.cache_dir(cfg, "val") / "features.safetensors"
    data = bytearray(file.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start, stop = json.loads(data[8:8 + size])["features"]["data_offsets"]
    for i in range(8 + size + start + 1, 8 + size + stop, 2):  # float16, little-endian: the high byte holds the sign
        data[i] ^= 0x80
    file.write_bytes(bytes(data))
    before = outputs(Path(cfg.run.runs_dir))
    result = _cli(tmp_path, root, ["evaluate", "--method", "kmeans", "--seed", "0"])
    assert result.exit_code == 2 and "does not match the digest" in result.output, result.output
    assert outputs(Path(cfg.run.runs_dir)) == before and "kmeans/seed0/metrics.json" not in before


# ---------------------------------------------------------------------------------------------- training


def test_interrupted_training_leaves_no_model_and_a_rerun_restarts_cleanly(tmp_path, monkeypatch,
                                                                          synthetic_dataset, no_tracking):
    import bench.methods.acseg
    import bench.runs
    from bench.runs import load_fitted, run_dir, run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    write_features(cfg, "train", spec, root)
    out = run_dir(cfg, "acseg", 0)

    real_loss, calls = bench.methods.acseg.concept_loss, []

    def interrupted_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(bench.methods.acseg, "concept_loss", interrupted_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, "acseg", 0, progress=False)
    assert outputs(Path(cfg.run.runs_dir)) == []
    monkeypatch.setattr(bench.methods.acseg, "concept_loss", real_loss)

    # interrupted while the model is being written: model.pt is written under a temporary name, then renamed
    real_save = torch.save

    def dies_mid_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(bench.runs.torch, "save", dies_mid_save)
    with pytest.raises(OSError, match="disk full"):
        run_train(cfg, "acseg", 0, progress=False)
    assert not (out / "model.pt").exists() and not (out / "train_summary.json").exists()
    assert not (out / ".model.pt.tmp").exists()  # the half-written temporary file is removed with the error
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_fitted(cfg, "acseg", 0, torch.device("cpu"))
    monkeypatch.setattr(bench.runs.torch, "save", real_save)

    run_train(cfg, "acseg", 0, progress=False)
    assert not (out / ".model.pt.tmp").exists()
    model, facts = load_fitted(cfg, "acseg", 0, torch.device("cpu"))
    assert facts["feature_dim"] == DIM
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(float((out / "train_log.csv").read_text().split()[-1].split(",")[1]),
                                                  abs=1e-5)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_nan_or_inf_feature_stops_training_with_a_clear_message_and_no_outputs(tmp_path, monkeypatch,
                                                                                  synthetic_dataset, poison):
    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root)
    write_features(cfg, "train", spec, root, poison=poison)
    monkeypatch.chdir(tmp_path)
    sets = [a for o in dotlist(config_overrides(tmp_path, root)) for a in ("-s", o)]
    result = CliRunner().invoke(app, ["train", "--params", str(PARAMS), "--dataset", "synthetic", "--seed", "0", *sets,
                                      "--quiet"])
    assert result.exit_code == 2, result.output
    assert "hold NaN or inf values" in result.output and "delete the feature cache entry" in result.output
    assert outputs(Path(cfg.run.runs_dir)) == []  # no model.pt, train_summary.json or metrics.json


def test_a_huge_learning_rate_stops_training_with_a_clear_message_and_no_outputs(tmp_path, synthetic_dataset,
                                                                                no_tracking):
    from bench.methods import TrainingDiverged
    from bench.runs import run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **{"acseg.train.lr": 1e30, "acseg.train.steps": 20, "acseg.train.grad_clip": 0.0})
    write_features(cfg, "train", spec, root)
    with pytest.raises(TrainingDiverged,
                       match=r"loss became (nan|inf|-inf) at step \d+ \(lr .*\); lower acseg.train.lr"):
        run_train(cfg, "acseg", 0, progress=False)
    assert outputs(Path(cfg.run.runs_dir)) == []


# ------------------------------------------------------------------------------------------------ MLflow


@pytest.mark.parametrize("store", ["unreachable server", "unwritable path"])
def test_mlflow_unavailable_costs_a_warning_not_the_results(tmp_path, monkeypatch, synthetic_dataset, caplog, store):
    from bench.runs import run_dir, run_evaluate, run_train

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # mlflow's default retries take minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    (tmp_path / "a_file").write_text("not a folder")
    uri = "http://127.0.0.1:9" if store == "unreachable server" else f"sqlite:///{tmp_path}/a_file/mlflow.db"
    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **{"run.tracking_uri": uri})
    write_features(cfg, "train", spec, root)
    write_features(cfg, "val", spec, root)

    with caplog.at_level(logging.WARNING, logger="bench.tracking"):
        run_train(cfg, "acseg", 0, progress=False)
        metrics = run_evaluate(cfg, "acseg", 0, progress=False)
    out = run_dir(cfg, "acseg", 0)
    for name in ("model.pt", "train_log.csv", "train_summary.json", "loss_curve.png", "metrics.json", "confusion.csv",
                 "qualitative.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["miou"] == metrics["miou"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if f"MLflow logging to {uri} failed" in w]) == 2  # one per run, train and evaluate
    assert all("the results are in the run folder regardless" in w for w in warnings)
