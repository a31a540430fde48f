"""Adding a method or a concept generator is one module plus one YAML block: a module written here (not part of the
package) declares its own settings section and registers itself; a block under its name in the params configures
it; then the method runs through train, evaluate and results, and the generator through the concept study, with no
other file touched. Their sections join the composed schema (validated like every other section) and leave it when
they are unregistered."""

import importlib
import sys
import textwrap

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.config import ConfigError
from bench.generators import GENERATORS
from bench.methods import METHODS
from bench.schema import load_config, schema
from tests.bench.test_robustness import config_overrides, write_features
from tests.conftest import PARAMS, TINY, dotlist

METHOD_MODULE = '''
"""Pooled random patches: each centroid is the mean of `pool` random patches of the cluster split."""
import torch
from pydantic import Field

from bench.config import Section
from bench.features import load_features
from bench.methods import Fitted, History, Method, register_method
from bench.methods.kmeans import KMeansSegmenter, SegmenterPredictor


class PooledPatchesConfig(Section):
    pool: int = Field(ge=1, description="patches averaged into each centroid")


class PooledPatches(Method):
    name = "pooled_patches"
    title = "pooled random patches (a plug-in)"
    config = PooledPatchesConfig

    def fit(self, cfg, seed, device, progress=True):
        feats = load_features(cfg, cfg.data.cluster_split)
        rows, k, pool = feats.all_rows().float(), self.n_clusters(cfg), cfg.pooled_patches.pool
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[: k * pool]
        centroids = rows[order].reshape(k, pool, -1).mean(1)
        history = History()
        history.log({"step": 1, "loss": 0.0})
        return Fitted(KMeansSegmenter(centroids, torch.zeros(feats.dim), cosine=True),
                      {"feature_dim": feats.dim, "weights_sha256": feats.meta["weights_sha256"]}, history.stop(),
                      {"pooled": pool})

    def build(self, cfg, facts):
        d = facts["feature_dim"]
        return KMeansSegmenter(torch.zeros(self.n_clusters(cfg), d), torch.zeros(d), cosine=True)

    def predictor(self, cfg, model, facts, device, split):
        return SegmenterPredictor(model)


register_method(PooledPatches())
'''

GENERATOR_MODULE = '''
"""Grid cells: each image cut into `rows` horizontal bands, whatever it shows (a label-free strawman)."""
import torch
from pydantic import Field

from bench.config import Section
from bench.generators import ConceptGenerator, ConceptStep, register_generator


class BandsConfig(Section):
    rows: int = Field(ge=1, description="horizontal bands per image")


class Bands(ConceptGenerator):
    name = "bands"
    title = "horizontal bands (a plug-in)"
    config = BandsConfig

    def build(self, cfg, settings, seed, device, feature_mean):
        rows = settings.bands.rows

        def assign(features):
            b, h, w, _ = features.shape
            band = (torch.arange(h, device=features.device) * rows // h).clamp_max(rows - 1)
            return band[:, None].expand(h, w).reshape(1, -1).expand(b, -1).contiguous()

        return ConceptStep(assign, rows, feature_mean.to(device))


register_generator(Bands())
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The two modules, written outside the package and imported as a user's would be; unregistered afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "pooled_patches.py").write_text(textwrap.dedent(METHOD_MODULE))
    (folder / "bands.py").write_text(textwrap.dedent(GENERATOR_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    before = schema()
    modules = [importlib.import_module(name) for name in ("pooled_patches", "bands")]
    yield modules
    METHODS.pop("pooled_patches", None)
    GENERATORS.pop("bands", None)
    for name in ("pooled_patches", "bands"):
        sys.modules.pop(name, None)
    assert schema() is before  # unregistered: the schema is the built-in one again


def params_with_blocks(tmp_path, pool: int = 3, rows: int = 2):
    """The repository's params plus one YAML block for each plug-in."""
    values = yaml.safe_load(PARAMS.read_text())
    values["pooled_patches"] = {"pool": pool}
    values["generators"]["bands"] = {"rows": rows}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_plugin_section_is_part_of_the_schema_and_validated(tmp_path, plugins):
    cfg = load_config(params_with_blocks(tmp_path), environment={})
    assert cfg.pooled_patches.pool == 3 and cfg.generators.bands.rows == 2
    assert "pooled_patches" in cfg.to_dict()  # its settings are part of every run's identity
    with pytest.raises(ConfigError, match=r"invalid parameter pooled_patches.pool=0: .*patches averaged"):
        load_config(params_with_blocks(tmp_path, pool=0), environment={})
    with pytest.raises(ConfigError, match=r"missing parameter 'pooled_patches'"):
        load_config(PARAMS, environment={})  # registered, but its block is absent


def test_a_plugin_method_and_generator_run_through_train_evaluate_results_and_the_study(
        tmp_path, synthetic_dataset, plugins, monkeypatch):
    from bench.concept_study import read_generator_results, run_generators

    spec, root = synthetic_dataset
    params = params_with_blocks(tmp_path)
    overrides = {**TINY, **config_overrides(tmp_path, root), "benchmark.datasets": ["synthetic"],
                 "datasets.synthetic": {"data": {"local_copy": str(root)}},
                 "benchmark.methods": ["kmeans", "pooled_patches"], "benchmark.crf_methods": [],
                 "benchmark.seeds": [0], "run.results_csv": str(tmp_path / "results.csv"),
                 "generators.names": ["kmeans", "bands"], "generators.out_dir": str(tmp_path / "generators")}
    cfg = load_config(params, dataset="synthetic", overrides=dotlist(overrides), environment={})
    for split in ("train", "val"):
        write_features(cfg, split, spec, root)
    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)
    sets = [a for o in dotlist(overrides) for a in ("-s", o)]
    runner = CliRunner()
    for command in (["train", "--method", "pooled_patches", "--seed", "0"],
                    ["train", "--method", "kmeans", "--seed", "0"],
                    ["evaluate", "--seed", "0"], ["results"]):
        result = runner.invoke(app, [*command, "--params", str(params), *sets, *(
            ["--dataset", "synthetic", "--quiet"] if command[0] != "results" else [])])
        assert result.exit_code == 0, (command, result.output)
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results.method) == {"kmeans", "pooled_patches"}
    assert results.miou.between(0, 100).all()

    run_generators(cfg, seeds=[0], progress=False)
    study = read_generator_results(tmp_path / "generators")
    bands = study[study.generator == "bands"].iloc[0]
    assert bands.concepts_per_image == 2 and 0 <= bands.miou <= 100  # two bands on every image
