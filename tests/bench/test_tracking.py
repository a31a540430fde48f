"""MLflow tracking: every run logged with its config, or (run.track: false) none at all, the run folder unchanged."""

from pathlib import Path

from bench.tracking import log_run, parent_run
from tests.conftest import make_config


def test_a_run_is_logged_with_its_params_metrics_and_tags(tmp_path):
    import mlflow

    cfg = make_config("camvid", **{"run.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "run.experiment": "t"})
    with parent_run(cfg, "sweep", {"axis": "prototypes"}) as parent:
        run_id = log_run(cfg, "train-camvid-acseg-seed0", {"seed": "0"}, {"miou": 21.5})
    mlflow.set_tracking_uri(cfg.run.tracking_uri)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["miou"] == 21.5 and run.data.tags["seed"] == "0"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["acseg.prototypes"] == "10"


def test_tracking_off_logs_nothing_and_leaves_the_identity_alone(tmp_path):
    on = make_config("camvid", **{"run.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    off = make_config("camvid", **{"run.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "run.track": False})
    with parent_run(off, "sweep", {}) as parent:
        assert parent is None and log_run(off, "run", {}, {"miou": 1.0}) is None
    assert not Path(tmp_path / "mlflow.db").exists()
    assert off.hash() == on.hash()  # where records go is not a result
