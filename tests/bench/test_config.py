"""One typed config: params.yaml is the composition of conf/, the schema names bad keys and types, the dataset's
own settings apply, the environment only says where things are, and locations stay out of the identity."""

import pytest
import yaml

from bench.config import Config, ConfigError, with_overrides
from bench.schema import load_config
from tests.conftest import PARAMS, ROOT, make_config


def compose(*overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_container(hydra_compose(config_name="config", overrides=list(overrides)), resolve=True)


def test_params_yaml_is_the_composition_of_conf():
    """`dvc repro` reads params.yaml, `dvc exp run` composes conf/: the two must say the same."""
    assert yaml.safe_load(PARAMS.read_text()) == compose()


@pytest.mark.parametrize("experiment,dataset", [("paper_voc2012", "voc2012"), ("paper_cocostuff27", "cocostuff27"),
                                                ("paper_cityscapes27", "cityscapes27")])
def test_paper_experiments_are_overrides_of_the_defaults(tmp_path, experiment, dataset):
    values = compose(f"experiment={experiment}")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    cfg = load_config(path, environment={})
    assert cfg.benchmark.datasets == [dataset] and cfg.data.dataset == dataset and cfg.ablations.dataset == dataset
    assert cfg.backbone.name == "vit_small_patch8_224.dino" and cfg.backbone.weights == "hub"
    paper = yaml.safe_load((ROOT / "conf/acseg/paper.yaml").read_text())
    assert cfg.acseg.prototypes == paper["prototypes"] == 5 and cfg.acseg.width is None
    assert cfg.acseg.train.steps == 2500 and cfg.stego.steps == 5000
    assert (cfg.acseg.classifier.background == "cls_attention") == (dataset == "voc2012")
    assert list(cfg.ablations.sweeps) == ["prototypes"]
    # each experiment file holds only what differs from the defaults (no full copies)
    assert len((ROOT / f"conf/experiment/{experiment}.yaml").read_text().splitlines()) < 40


def test_the_default_loads_and_validates():
    cfg = load_config(PARAMS, environment={})
    assert cfg.data.dataset == cfg.benchmark.datasets[0] and cfg.backbone.weights_sha256
    assert cfg.run.tracking_uri == "sqlite:///mlflow.db"
    assert isinstance(cfg, Config)


def test_a_config_is_frozen_and_variants_are_new_validated_configs():
    cfg = load_config(PARAMS, environment={})
    with pytest.raises(Exception):
        cfg.acseg.prototypes = 3  # no runtime state is written into a validated config
    other = with_overrides(cfg, {"acseg.prototypes": 20})
    assert other.acseg.prototypes == 20 and cfg.acseg.prototypes != 20
    with pytest.raises(ConfigError, match=r"acseg.prototypes=1"):
        with_overrides(cfg, {"acseg.prototypes": 1})
    with pytest.raises(ConfigError, match="unknown parameter 'acseg.protoypes'"):
        with_overrides(cfg, {"acseg.protoypes": 3})


def test_environment_only_sets_locations_and_locations_are_not_identity():
    env = {"ACSEG_CAMVID_DIR": "/data/CamVid", "ACSEG_WEIGHTS_DIR": "/w", "MLFLOW_TRACKING_URI": "sqlite:////tmp/x.db"}
    cfg = load_config(PARAMS, environment=env)
    assert (cfg.data.local_copy, cfg.backbone.weights_dir, cfg.run.tracking_uri) == ("/data/CamVid", "/w",
                                                                                     "sqlite:////tmp/x.db")
    plain = load_config(PARAMS, environment={})
    assert cfg.hash() == plain.hash()
    moved = load_config(PARAMS, overrides=["features.cache_dir=/shared/cache", "run.runs_dir=/shared/runs",
                                           "crf.workers=1", "ablations.jobs=1"], environment={})
    assert moved.hash() == plain.hash()  # two nodes mounting the cache elsewhere compute the same hash
    assert load_config(PARAMS, overrides=["run.train_threads=1"], environment={}).hash() != plain.hash()


def test_an_added_option_at_its_neutral_value_leaves_the_identity_alone():
    plain = load_config(PARAMS, environment={})
    assert plain.stego.five_crop_ratio == 0 and "five_crop_ratio" not in plain.to_dict()["stego"]
    crops = load_config(PARAMS, overrides=["stego.five_crop_ratio=0.5"], environment={})
    assert crops.to_dict()["stego"]["five_crop_ratio"] == 0.5 and crops.hash() != plain.hash()
    with pytest.raises(ConfigError, match="five_crop_ratio"):
        load_config(PARAMS, overrides=["stego.five_crop_ratio=1"], environment={})


def test_overrides_are_typed_yaml():
    cfg = load_config(PARAMS, overrides=["acseg.prototypes=7", "acseg.self_attention=false", "benchmark.seeds=[0, 4]",
                                         "acseg.width=null"], environment={})
    assert cfg.acseg.prototypes == 7 and cfg.acseg.self_attention is False and cfg.benchmark.seeds == [0, 4]
    assert cfg.acseg.width is None


@pytest.mark.parametrize("override,match", [
    ("acseg.prototypes=1", r"invalid parameter acseg.prototypes=1: .*greater than or equal to 2.*at least 2 prototypes"),
    ("acseg.prototypes=five", r"invalid parameter acseg.prototypes='five': .*valid integer"),
    ("acseg.loss=l2", r"invalid parameter acseg.loss='l2': .*'modularity'"),
    ("features.type=values", r"invalid parameter features.type='values'"),
    ("acseg.protoypes=5", r"unknown parameter 'acseg.protoypes'; acseg has \[.*'prototypes'"),
    ("acseg.train.lr=-1", r"invalid parameter acseg.train.lr=-1: .*greater than 0"),
    ("run.train_threads=-1", r"invalid parameter run.train_threads=-1"),
    ("stego.knn_draw=99", r"stego.knn_draw=99 must be between 1 and stego.knn"),
    ("acseg.classifier.background=saliency", r"invalid parameter acseg.classifier.background='saliency'"),
    ("acseg.classifier.overcluster_k=11", r"acseg.classifier.overcluster_k=11: over-clustering needs more clusters"),
    ("backbone.weights=/abs/w.safetensors", r"backbone.weights=.*file name"),
    ("acseg", r"must look like section.field=value"),
])
def test_invalid_parameter_names_it_and_says_why(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PARAMS, overrides=[override], environment={})


def test_unknown_method_or_dataset_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'dino'; known: \['acseg', 'dsm', 'kmeans', 'stego'"):
        load_config(PARAMS, overrides=["benchmark.methods=[acseg, dino]"], environment={})
    with pytest.raises(ConfigError, match=r"unknown dataset 'imagenet'; known: \[.*'camvid'"):
        load_config(PARAMS, dataset="imagenet", environment={})


def test_a_dataset_of_the_benchmark_needs_its_settings_entry():
    with pytest.raises(ConfigError, match="'voc2012' has no entry in datasets"):
        load_config(PARAMS, overrides=["benchmark.datasets=[camvid, voc2012]"], environment={})


def test_the_dataset_settings_apply_over_the_common_ones_and_the_command_line_over_both():
    cfg = load_config(PARAMS, overrides=["datasets.camvid.features.height=112"], environment={})
    assert cfg.features.height == 112
    cli = load_config(PARAMS, overrides=["datasets.camvid.features.height=112", "features.height=56"],
                      environment={})
    assert cli.features.height == 56


@pytest.mark.parametrize("dataset,variable", [("camvid", "ACSEG_CAMVID_DIR"), ("voc2012", "ACSEG_VOC_DIR"),
                                              ("cocostuff27", "ACSEG_COCOSTUFF_DIR"),
                                              ("cityscapes27", "ACSEG_CITYSCAPES_DIR")])
def test_each_dataset_reads_only_its_own_location_variable(dataset, variable):
    env = {v: f"/data/{v}" for v in ("ACSEG_CAMVID_DIR", "ACSEG_VOC_DIR", "ACSEG_COCOSTUFF_DIR", "ACSEG_CITYSCAPES_DIR")}
    cfg = load_config(PARAMS, dataset=dataset, environment=env)
    assert cfg.data.local_copy == f"/data/{variable}"
    explicit = load_config(PARAMS, dataset=dataset, overrides=["data.local_copy=/mine"], environment=env)
    assert explicit.data.local_copy == "/mine"  # the params win over the environment


def test_the_tiny_test_settings_are_valid():
    cfg = make_config()
    assert cfg.acseg.train.steps == 5 and list(cfg.ablations.sweeps) == ["loss", "feature"]


def test_the_environment_is_read_in_one_module_only():
    """bench/config.py reads (and, for MLflow's settings and the pinned arithmetic, writes) the environment; no other
    module touches it."""
    offenders = [p.relative_to(ROOT) for p in (ROOT / "bench").rglob("*.py") if p.name != "config.py"
                 and ("os.environ" in p.read_text() or "getenv" in p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("dataset", ["camvid", "stanford_background"])
def test_the_composed_schema_keeps_the_identity_of_every_stored_run(dataset):
    """The schema is assembled from the registries; the identity it hashes is the one every committed run was made
    under (runs/<dataset>/<method>/seed0/metrics.json), whatever the order the sections are registered in."""
    import json

    cfg = load_config(PARAMS, dataset=dataset, environment={})
    stored = {json.loads(p.read_text())["config_hash"] for p in (ROOT / "runs" / dataset).glob("*/seed0/metrics.json")}
    assert stored == {cfg.hash()}
