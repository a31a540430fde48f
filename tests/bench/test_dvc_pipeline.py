"""dvc.yaml and the Python code agree on where things live, and the pipeline is the dataset x method x seed matrix
of the params: every stage calls the CLI, names no dataset or method, and lists the params that change it."""

import re

import yaml

from bench.cache import weights_dir
from bench.data import record_path
from bench.runs import eval_dir, run_dir
from tests.conftest import PARAMS, ROOT, make_config

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS_VALUES = yaml.safe_load(PARAMS.read_text())


def interpolate(template: str, item: dict | None = None, key: str = "") -> str:
    def value(match):
        name = match.group(1)
        if name == "key":
            return key
        if name.startswith("item."):
            return str(item[name[len("item."):]])
        node = PARAMS_VALUES
        for part in name.split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, template)


def paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_feature_cache_and_run_folders_in_dvc_yaml_match_python():
    for dataset in PARAMS_VALUES["benchmark"]["datasets"]:
        cfg = make_config(dataset, tiny=False)
        for split in PARAMS_VALUES["benchmark"]["splits"]:
            (out,) = paths(STAGES["features"]["outs"])
            assert interpolate(out, {"dataset": dataset, "split": split}) == str(weights_dir(cfg, split))
        assert interpolate(paths(STAGES["fetch"]["outs"])[0], {"dataset": dataset}) == str(record_path(dataset))
        for method in PARAMS_VALUES["benchmark"]["methods"]:
            item = {"dataset": dataset, "method": method, "seed": 0}
            model = interpolate(paths(STAGES["train"]["outs"])[0], item)
            assert model == str(run_dir(cfg, method, 0) / "model.pt")
            assert interpolate(STAGES["evaluate"]["deps"][0], item) == model
            crf_out = interpolate(paths(STAGES["evaluate-crf"]["outs"])[0], item)
            assert str(eval_dir(cfg, method, 0, crf=True)).startswith(crf_out + "/")


def test_the_benchmark_is_a_matrix_over_the_params():
    for name in ("train", "evaluate"):
        assert STAGES[name]["matrix"] == {"dataset": "${benchmark.datasets}", "method": "${benchmark.methods}",
                                          "seed": "${benchmark.seeds}"}
    # the CRF refines every method and seed of a dataset in one pass (each image's kernels built once)
    assert STAGES["evaluate-crf"]["matrix"] == {"dataset": "${benchmark.datasets}"}
    assert STAGES["features"]["matrix"] == {"dataset": "${benchmark.datasets}", "split": "${benchmark.splits}"}
    assert STAGES["ablate"]["foreach"] == "${ablations.sweeps}" and "--sweep ${key}" in STAGES["ablate"]["do"]["cmd"]
    commands_and_files = yaml.safe_dump([{k: v for k, v in s.get("do", s).items() if k != "params"}
                                         for s in STAGES.values()]).lower()
    for name in ("camvid", "stanford", "voc2012", "stego", "kmeans"):
        assert name not in commands_and_files, name  # no stage names a dataset or a method


def test_every_stage_calls_the_cli_and_lists_the_params_that_change_it():
    for name, stage in STAGES.items():
        stage = stage.get("do", stage)
        assert stage["cmd"].startswith("acseg-bench "), name
    train = STAGES["train"]["params"]
    assert {"run.train_threads", "${item.method}", "datasets.${item.dataset}"} <= set(train)
    assert "run.train_threads" in STAGES["ablate-default"]["params"]
    assert "crf.alpha" in STAGES["evaluate-crf"]["params"] and not any(p.startswith("crf") for p in
                                                                       STAGES["evaluate"]["params"])
    assert "crf.workers" not in STAGES["evaluate-crf"]["params"]  # speed, never the result
    assert "metrics" in STAGES["evaluate"] and "metrics" in STAGES["results"] and "plots" in STAGES["train"]
    assert (ROOT / ".dvc" / "config").read_text().count("analytics = false") == 1
    assert "enabled = true" in (ROOT / ".dvc" / "config").read_text()  # Hydra composition of conf/


def test_every_params_key_a_stage_lists_exists():
    for name, stage in STAGES.items():
        stage = stage.get("do", stage)
        for param in stage.get("params", []):
            items = [{"dataset": d, "method": m} for d in PARAMS_VALUES["benchmark"]["datasets"]
                     for m in PARAMS_VALUES["benchmark"]["methods"]]
            keys = [k for k in PARAMS_VALUES["ablations"]["sweeps"]] if "${key}" in param else [""]
            for item in items:
                for key in keys:
                    node = PARAMS_VALUES
                    for part in interpolate(param, item, key).split("."):
                        assert part in node, (name, param)
                        node = node[part]
