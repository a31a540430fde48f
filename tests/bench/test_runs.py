"""bench/runs.py: the pipeline's steps. Here: training runs on run.train_threads, whatever the process has.

ACSeg's training turns the float-rounding differences of another thread count into points of mIoU on CamVid
(measured: 19.59 vs 18.92 mIoU for seed 0 at 1 and 2 threads), so the count is part of the configuration.
"""

import json

import pytest
import torch

from bench.config import ConfigError
from bench.schema import load_config
from tests.bench.test_robustness import make_config, no_tracking, write_features  # noqa: F401
from tests.conftest import PARAMS


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["acseg", "stego"])
def test_training_runs_on_the_configured_threads_and_restores_the_process_count(
        method, tmp_path, monkeypatch, synthetic_dataset, no_tracking, restore_threads):  # noqa: F811
    import bench.methods.acseg
    import bench.methods.stego
    from bench.runs import run_dir, run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **{"run.train_threads": 1, "stego.steps": 2, "stego.batch_size": 2,
                                          "stego.knn": 1, "stego.knn_draw": 1, "stego.feature_samples": 2})
    write_features(cfg, "train", spec, root)
    seen = []
    module, name = ((bench.methods.acseg, "train_generator") if method == "acseg"
                    else (bench.methods.stego, "train_stego"))
    real = getattr(module, name)

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    torch.set_num_threads(2)
    run_train(cfg, method, 0, progress=False)
    assert seen == [1]  # trained on run.train_threads
    assert torch.get_num_threads() == 2  # and the process's own count is back for evaluation
    summary = json.loads((run_dir(cfg, method, 0) / "train_summary.json").read_text())
    assert summary["torch_threads"] == 1


def test_train_threads_zero_keeps_the_process_count(tmp_path, synthetic_dataset, no_tracking,  # noqa: F811
                                                    restore_threads):
    from bench.runs import run_dir, run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **{"run.train_threads": 0})
    write_features(cfg, "train", spec, root)
    torch.set_num_threads(2)
    run_train(cfg, "acseg", 0, progress=False)
    assert json.loads((run_dir(cfg, "acseg", 0) / "train_summary.json").read_text())["torch_threads"] == 2


def test_train_threads_is_part_of_the_configuration():
    base = load_config(PARAMS, environment={})
    assert base.run.train_threads == 2
    assert base.hash() != load_config(PARAMS, overrides=["run.train_threads=1"], environment={}).hash()
    with pytest.raises(ConfigError, match=r"run\.train_threads=-1.*greater than or equal to 0"):
        load_config(PARAMS, overrides=["run.train_threads=-1"], environment={})
