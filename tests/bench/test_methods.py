"""A new method is one module and one registry entry: a method registered here (K random patches of the cluster
split as centroids) runs through train, evaluate (with and without the CRF) and results through the CLI, without
a change to bench/runs.py; every registered method declares the same contract."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.methods import METHODS, Fitted, History, Method, register_method
from tests.bench.test_robustness import config_overrides, write_features
from tests.conftest import PARAMS, dotlist


class RandomPatches(Method):
    """K patches of the cluster split drawn at random are the centroids; every pixel takes its nearest one."""

    name = "random_patches"
    title = "random patches (a test method)"

    def fit(self, cfg, seed, device, progress=True):
        from bench.features import load_features
        from bench.methods.kmeans import KMeansSegmenter

        feats = load_features(cfg, cfg.data.cluster_split)
        rows = feats.all_rows().float()
        picks = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[: self.n_clusters(cfg)]]
        history = History()
        history.log({"step": 1, "loss": 0.0})
        model = KMeansSegmenter(picks, torch.zeros(feats.dim), cosine=True)
        return Fitted(model, {"feature_dim": feats.dim, "weights_sha256": feats.meta["weights_sha256"]},
                      history.stop(), {"picked": int(len(picks))})

    def build(self, cfg, facts):
        from bench.methods.kmeans import KMeansSegmenter

        d = facts["feature_dim"]
        return KMeansSegmenter(torch.zeros(self.n_clusters(cfg), d), torch.zeros(d), cosine=True)

    def predictor(self, cfg, model, facts, device, split):
        from bench.methods.kmeans import SegmenterPredictor

        return SegmenterPredictor(model)


@pytest.fixture
def registered():
    method = register_method(RandomPatches())
    yield method
    METHODS.pop(method.name)


def test_a_registered_method_runs_through_train_evaluate_and_results(tmp_path, synthetic_dataset, registered,
                                                                     monkeypatch):
    spec, root = synthetic_dataset
    overrides = {**config_overrides(tmp_path, root), "benchmark.datasets": ["synthetic"],
                 "datasets.synthetic": {"data": {"local_copy": str(root)}},
                 "benchmark.methods": ["kmeans", "random_patches"], "benchmark.crf_methods": ["random_patches"],
                 "benchmark.seeds": [0], "run.results_csv": str(tmp_path / "results.csv")}
    from tests.conftest import make_config

    cfg = make_config("synthetic", **overrides)
    for split in ("train", "val"):
        write_features(cfg, split, spec, root)
    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)
    sets = [a for o in dotlist(overrides) for a in ("-s", o)]
    runner = CliRunner()
    for command in (["train", "--method", "random_patches", "--seed", "0"],
                    ["train", "--method", "kmeans", "--seed", "0"],
                    ["evaluate", "--seed", "0"], ["evaluate", "--crf"], ["results"]):
        result = runner.invoke(app, [*command, "--params", str(PARAMS), *sets, *(
            ["--dataset", "synthetic", "--quiet"] if command[0] != "results" else [])])
        assert result.exit_code == 0, (command, result.output)
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(zip(df.method, df.crf)) == {("kmeans", False), ("random_patches", False), ("random_patches", True)}
    summary = json.loads((tmp_path / "runs/synthetic/random_patches/seed0/train_summary.json").read_text())
    assert summary["picked"] == 11


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_declares_the_contract(name):
    method = METHODS[name]
    assert method.name == name and method.title
    for hook in ("fit", "build", "predictor"):
        assert getattr(type(method), hook) is not getattr(Method, hook), (name, hook)  # each implements its own
