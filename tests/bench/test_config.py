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
