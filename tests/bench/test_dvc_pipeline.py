"""dvc.yaml and the Python code must agree on where the feature cache lives and what the stages are."""

import re
from pathlib import Path

import yaml

from bench.cache import cache_dir
from bench.config import load_config

ROOT = Path(__file__).parents[2]


def interpolate(template: str, params: dict, item: str) -> str:
    def value(match):
        key = match.group(1)
        if key == "item":
            return item
        node = params
        for part in key.split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, template)


def test_feature_cache_path_in_dvc_yaml_matches_python():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = load_config(ROOT / "params.yaml", environment={})
    from acseg.features import FEATURE_TYPES
    from bench.config import with_overrides

    for stage, weights in (("features", {}), ("features-random", {"backbone__weights": "random"})):
        templates = [next(iter(o)) if isinstance(o, dict) else o for o in stages[stage]["do"]["outs"]]
        assert len(templates) == len(FEATURE_TYPES)  # one pass caches every feature type
        for split in stages[stage]["foreach"]:
            expected = {str(cache_dir(with_overrides(cfg, features__type=t, **weights), split)) for t in FEATURE_TYPES}
            assert {interpolate(t, params, split) for t in templates} == expected


def test_knn_table_path_in_dvc_yaml_matches_python():
    from bench.stego import knn_path

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = load_config(ROOT / "params.yaml", environment={})
    (template,) = [next(iter(o)) for o in stages["stego-knn"]["outs"]]
    assert interpolate(template, params, "") == str(knn_path(cfg, cfg.data.train_split))
    assert stages["stego"]["do"]["deps"][0] == template


def test_every_stage_calls_the_cli_and_declares_metrics():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"fetch", "features", "features-random", "train", "evaluate", "diagnose", "kmeans",
                           "stego-knn", "stego", "crf", "results", "ablate-default", "ablate", "ablations", "report"}
    assert stages["ablate"]["foreach"] == "${ablations.sweeps}" and "--sweep ${key}" in stages["ablate"]["do"]["cmd"]
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        assert cmd.startswith("acseg-bench "), name
    assert "metrics" in stages["evaluate"]["do"] and "metrics" in stages["results"]
    assert "metrics" in stages["stego"]["do"] and "metrics" in stages["crf"]
    assert "--crf" in stages["crf"]["cmd"] and set(stages["crf"]["matrix"]["method"]) == {"acseg", "kmeans", "stego"}
    assert (ROOT / ".dvc" / "config").read_text().count("analytics = false") == 1


def test_stages_are_dataset_generic():
    """No stage names a dataset's files: the params (data.dataset, data.manifest_out) say which."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "camvid" not in yaml.safe_dump(stages).lower()
    assert stages["fetch"]["outs"] == [{"${data.manifest_out}": {"cache": False}}]
    assert "${data.manifest_out}" in stages["features"]["do"]["deps"]
