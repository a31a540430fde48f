"""Studies: a sweep file of named whole configurations runs through the ablations' steps, writes one row per run with
the comparison against its reference, reuses runs it already has, and a bad file is one clear error."""

import pandas as pd
import pytest
import yaml

from bench.config import ConfigError
from bench.studies import read_study, run_study
from tests.bench.test_robustness import make_config, write_features


def write(tmp_path, **study) -> str:
    path = tmp_path / "mystudy.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


@pytest.mark.parametrize("study, message", [
    ({"datasets": ["camvid"], "reference": "a", "points": {"a": {"method": "nope"}}}, "unknown method 'nope'"),
    ({"datasets": ["camvid"], "reference": "b", "points": {"a": {"method": "kmeans"}}}, "reference 'b' is not one"),
    ({"datasets": ["camvid"], "reference": "a", "points": {"a": {"method": "acseg",
                                                                 "set": {"acseg.arithmetic": "native"}}}},
     "acseg.arithmetic is set for a whole study"),
    ({"datasets": ["camvid"], "reference": "a", "points": {"a": {"method": "kmeans", "sett": {}}}}, "points.a.sett"),
])
def test_a_bad_study_file_is_one_clear_error(tmp_path, study, message):
    with pytest.raises(ConfigError, match=message):
        read_study(write(tmp_path, **study))


def test_a_study_runs_its_points_compares_them_and_reuses_its_runs(tmp_path, synthetic_dataset, monkeypatch):
    spec, root = synthetic_dataset
    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)
    base = make_config(tmp_path, root, **{"run.track": False})
    for split in ("train", "val"):
        write_features(base, split, spec, root)
    path = write(tmp_path, datasets=["synthetic"], seeds=[0, 1], reference="floor",
                 points={"floor": {"method": "kmeans"}, "floor_k3": {"method": "kmeans", "set": {"kmeans.k": 3}}})
    out = run_study(path, {"synthetic": base}, tmp_path / "out", tmp_path / "study_runs", progress=False,
                    echo=lambda *_: None)
    rows = pd.read_csv(out)
    assert list(rows.variant) == ["floor", "floor", "floor_k3", "floor_k3"] and list(rows.seed) == [0, 1, 0, 1]
    assert rows.overrides.fillna("").tolist() == ["", "", "kmeans.k=3", "kmeans.k=3"]
    assert rows.miou.between(0, 100).all() and rows.config_hash.nunique() == 2
    assert (tmp_path / "study_runs/mystudy/floor_k3/synthetic/kmeans/seed1/metrics.json").is_file()
    md = out.with_suffix(".md").read_text()
    assert "| floor_k3 | kmeans |" in md and out.with_suffix(".png").is_file()

    import bench.ablate

    def fail(*a, **k):
        raise AssertionError("a run with metrics for the same config was trained again")

    monkeypatch.setattr(bench.ablate, "run_train", fail)
    again = pd.read_csv(run_study(path, {"synthetic": base}, tmp_path / "again", tmp_path / "study_runs",
                                  progress=False, echo=lambda *_: None))
    assert again.miou.tolist() == rows.miou.tolist()
