from pathlib import Path

import pytest

from bench.config import PRESETS, ConfigError, load_config, with_overrides

PARAMS = Path(__file__).parents[2] / "params.yaml"


def test_params_yaml_loads_and_validates():
    cfg = load_config(PARAMS, environment={})
    assert cfg.data.dataset == "camvid" and cfg.backbone.weights_sha256
    assert cfg.run.tracking_uri == "sqlite:///mlflow.db"


def test_environment_only_sets_locations():
    cfg = load_config(PARAMS, environment={"ACSEG_CAMVID_DIR": "/data/CamVid", "ACSEG_WEIGHTS_DIR": "/w",
                                           "MLFLOW_TRACKING_URI": "sqlite:////tmp/x.db"})
    assert (cfg.data.local_copy, cfg.backbone.weights_dir, cfg.run.tracking_uri) == ("/data/CamVid", "/w", "sqlite:////tmp/x.db")
    assert cfg.hash("acseg", "train") == load_config(PARAMS, environment={}).hash("acseg", "train")


def test_overrides_are_typed():
    cfg = load_config(PARAMS, overrides=["acseg.prototypes=10", "acseg.self_attention=false", "run.seeds=0,4"],
                      environment={})
    assert cfg.acseg.prototypes == 10 and cfg.acseg.self_attention is False and cfg.run.seeds == [0, 4]


@pytest.mark.parametrize("override,match", [
    ("acseg.prototypes=1", r"acseg.prototypes=1.*at least 2 prototypes"),
    ("acseg.prototypes=five", r"acseg.prototypes: expected an integer"),
    ("acseg.loss=l2", r"acseg.loss='l2'.*must be one of"),
    ("features.type=values", r"features.type='values'"),
    ("acseg.protoypes=5", r"unknown parameter 'acseg.protoypes'"),
    ("train.lr=-1", r"train.lr=-1.0: must be positive"),
])
def test_invalid_parameter_names_it_and_says_why(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PARAMS, overrides=[override], environment={})


def test_presets_are_valid():
    for name in PRESETS:
        load_config(PARAMS, preset=name, environment={})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(PARAMS, preset="nope", environment={})


def test_with_overrides_copies():
    cfg = load_config(PARAMS, overrides=["acseg.prototypes=3"], environment={})
    other = with_overrides(cfg, acseg__prototypes=20)
    assert other.acseg.prototypes == 20 and cfg.acseg.prototypes == 3


@pytest.mark.parametrize("dataset,variable", [("camvid", "ACSEG_CAMVID_DIR"), ("voc2012", "ACSEG_VOC_DIR"),
                                              ("cocostuff27", "ACSEG_COCOSTUFF_DIR"),
                                              ("cityscapes27", "ACSEG_CITYSCAPES_DIR")])
def test_each_dataset_reads_only_its_own_location_variable(dataset, variable):
    env = {v: f"/data/{v}" for v in ("ACSEG_CAMVID_DIR", "ACSEG_VOC_DIR", "ACSEG_COCOSTUFF_DIR", "ACSEG_CITYSCAPES_DIR")}
    cfg = load_config(PARAMS, overrides=[f"data.dataset={dataset}"], environment=env)
    assert cfg.data.local_copy == f"/data/{variable}"
    explicit = load_config(PARAMS, overrides=[f"data.dataset={dataset}", "data.local_copy=/mine"], environment=env)
    assert explicit.data.local_copy == "/mine"  # the params win over the environment


def test_options_added_later_leave_the_identity_of_earlier_configurations():
    """classifier.background and the over-clustering options enter the config hash (and the config saved with a
    model) only when set, so every result made before they existed keeps its identity."""
    cfg = load_config(PARAMS, environment={})
    assert "background" not in cfg.to_dict()["classifier"] and "overcluster_k" not in cfg.to_dict()["kmeans"]
    assert cfg.flat()["classifier.background"] == "none"  # MLflow still logs every option
    changed = load_config(PARAMS, overrides=["classifier.background=cls_attention"], environment={})
    assert changed.to_dict()["classifier"]["background"] == "cls_attention" and changed.hash() != cfg.hash()


@pytest.mark.parametrize("override,match", [
    ("classifier.background=saliency", r"classifier.background='saliency'.*must be one of"),
    ("classifier.overcluster_k=11", r"classifier.overcluster_k=11: over-clustering needs more clusters than the 11"),
    ("kmeans.overcluster_k=5", r"kmeans.overcluster_k=5: over-clustering needs more"),
])
def test_invalid_new_options_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PARAMS, overrides=[override], environment={})


def test_paper_params_files_load_and_use_the_paper_settings():
    root = PARAMS.parent / "params"
    files = sorted(root.glob("paper_*.yaml"))
    assert [f.stem for f in files] == ["paper_cityscapes27", "paper_cocostuff27", "paper_voc2012"]
    for f in files:
        cfg = load_config(f, environment={})
        assert cfg.backbone.name == "vit_small_patch8_224.dino" and cfg.data.dataset == f.stem[len("paper_"):]
        for key, value in PRESETS["paper"].items():  # the paper's ACG, as --preset paper sets it
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value, (f.name, key)
        assert cfg.run.runs_dir != "runs" and cfg.run.results_csv != "reports/results.csv"  # never CamVid's outputs
    voc = load_config(root / "paper_voc2012.yaml", environment={})
    assert voc.classifier.background == "cls_attention"
