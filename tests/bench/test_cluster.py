"""Scaling out: sharded feature extraction, locations out of the config hash, and a REAL single-node Slurm (munge,
MariaDB, slurmdbd, slurmctld, slurmd) with a REAL MLflow server on PostgreSQL (tests/bench/local_cluster.py).

Synthetic: the 56x70 dataset of tests/conftest.py with a random ViT and a one-block ACSeg (test_robustness.py's
settings). The Slurm tests need root and the Debian packages that .ci/run installs; elsewhere they are skipped,
saying why. Every server they start listens on 127.0.0.1 and is stopped, by pid, when the module's tests end.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import cache
from bench.cli import app
from bench.features import ShardError, ensure_features, extract_shard, merge_shards, missing_shards, shards_dir
from tests.bench import local_cluster
from tests.bench.test_robustness import config_overrides, make_config
from tests.conftest import PARAMS, dotlist

runner = CliRunner()


def sets(tmp_path: Path, root: Path, **overrides) -> list[str]:
    return [a for o in dotlist(config_overrides(tmp_path, root, **overrides)) for a in ("-s", o)]


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output + (f"\n{result.exception!r}" if result.exception else "")
    return result.output


def entry_bytes(cfg, split: str) -> dict[str, bytes]:
    """Every file of both feature types' entries of a split."""
    from acseg.features import FEATURE_TYPES
    from bench.config import with_overrides

    out = {}
    for t in FEATURE_TYPES:
        path = cache.cache_dir(with_overrides(cfg, {"features.type": t}), split)
        for name in ("features.safetensors", "meta.json"):
            out[f"{t}/{name}"] = (path / name).read_bytes()
    return out


# ------------------------------------------------------------------------------------------------ identity


def test_the_config_hash_leaves_out_where_things_are(tmp_path, synthetic_dataset):
    """Two nodes mounting the cache or the runs elsewhere, or logging elsewhere, compute one hash."""
    from bench.ablate import grid, parse_axes, point_config

    _, root = synthetic_dataset
    a = make_config(tmp_path, root)
    b = make_config(tmp_path, root, **{"features.cache_dir": "/mnt/other/cache", "run.runs_dir": "/mnt/other/runs",
                                       "run.tracking_uri": "http://127.0.0.1:5000", "data.local_copy": "/elsewhere",
                                       "ablations.jobs": 8, "crf.workers": 3})
    assert a.hash() == b.hash() and a.hash("data", "backbone", "features") == b.hash("data", "backbone", "features")
    (point,) = grid(parse_axes({"prototypes": "2"}))
    assert point_config(a, point, "/node1/runs", "p").hash() == point_config(b, point, "relative/runs", "p").hash()
    assert make_config(tmp_path, root, **{"features.height": 28}).hash() != a.hash()  # what is computed still counts


def test_training_threads_beyond_the_cpus_of_a_task_are_named_before_submitting(tmp_path, synthetic_dataset, caplog):
    from bench.cluster import Task, _warn_about_threads

    _, root = synthetic_dataset
    tasks = [Task(print, (make_config(tmp_path, root, **{"run.train_threads": 2}), 0), "point")]
    _warn_about_threads(2, tasks)
    assert not caplog.records
    _warn_about_threads(1, tasks)
    assert "run.train_threads=2 but --cpus-per-task 1" in caplog.text and "--cpus-per-task 2" in caplog.text


# ------------------------------------------------------------------------------------------------- shards


def test_shards_merge_into_the_serial_entry_bitwise(tmp_path, synthetic_dataset):
    _, root = synthetic_dataset
    batch_size, shards = 2, 2  # batches of 2 and 1 images
    serial, sharded = (make_config(tmp_path, root, **{"features.batch_size": batch_size,
                                                      "features.cache_dir": str(tmp_path / where)}) for where in "ab")
    ensure_features(serial, "train", progress=False)
    for i in reversed(range(shards)):  # any order
        extract_shard(sharded, "train", i, shards, progress=False)
    assert missing_shards(sharded, "train", shards) == []
    merge_shards(sharded, "train", shards)
    assert entry_bytes(sharded, "train") == entry_bytes(serial, "train")  # both types, tensors and meta
    assert not shards_dir(sharded, "train", shards).exists()  # the parts are gone once merged


def test_shards_of_images_of_several_shapes_cut_between_whole_batches(tmp_path):
    """data.keep_aspect: each image its own grid, a batch is consecutive images of one input size; shards follow
    the serial pass's batches (read from the images' headers), so the merged entry is still the serial one."""
    import numpy as np
    from PIL import Image

    from bench import data as data_mod
    from bench.features import batch_starts
    from tests import conftest

    root, rng = tmp_path / "shapes", np.random.default_rng(0)
    names = [f"t{i}.png" for i in range(5)]
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True)
    for name, (h, w) in zip(names, [(56, 70), (70, 56), (70, 56), (56, 70), (56, 70)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "train" / name)
        Image.fromarray(rng.integers(0, 12, (h, w), dtype=np.uint8)).save(root / "trainannot" / name)
    conftest.register_dataset("shapes", root, {"train": names})
    try:
        def config(cache_dir):
            return conftest.make_config("shapes", **config_overrides(tmp_path, root, **{
                "data.keep_aspect": True, "features.cache_dir": str(cache_dir)}))

        serial, sharded = config(tmp_path / "a"), config(tmp_path / "b")
        assert batch_starts(sharded, "train") == [0, 1, 3, 5]  # 56x70 | 70x56, 70x56 | 56x70, 56x70 (2 a batch)
        ensure_features(serial, "train", progress=False)
        for i in range(2):
            extract_shard(sharded, "train", i, 2, progress=False)  # batch 0 | batches 1, 2 (images 1-4)
        merge_shards(sharded, "train", 2)
        assert entry_bytes(sharded, "train") == entry_bytes(serial, "train")
    finally:
        data_mod.DATASETS.pop("shapes", None)


def test_too_many_shards_is_a_clear_error(tmp_path, synthetic_dataset):
    _, root = synthetic_dataset
    cfg = make_config(tmp_path, root)  # batch 2: the 3 train images are 2 batches
    with pytest.raises(ShardError, match="3 images in 2 batches .* use at most 2 shards"):
        extract_shard(cfg, "train", 0, 3, progress=False)


def test_a_missing_shard_means_no_merged_entry_and_says_which(tmp_path, synthetic_dataset, monkeypatch):
    _, root = synthetic_dataset
    monkeypatch.chdir(tmp_path)
    opts = ["--params", str(PARAMS), "--dataset", "synthetic", "--split", "train", "--quiet",
            *sets(tmp_path, root, **{"features.batch_size": 1})]
    cfg = make_config(tmp_path, root, **{"features.batch_size": 1})
    path, meta = cache.cache_dir(cfg, "train"), cache.expected_meta(cfg, "train")
    invoke("features", "--shard", "0/3", *opts)
    invoke("features", "--shard", "2/3", *opts)
    out = invoke("features", "--merge", "3", *opts, code=2)
    assert "shard(s) 1/3 missing or incomplete" in out and "nothing merged" in out
    assert not cache.is_valid(path, meta) and not path.exists()
    invoke("features", "--shard", "1/3", *opts)  # only the missing one is computed
    invoke("features", "--merge", "3", *opts)
    assert cache.is_valid(path, meta)
    assert invoke("features", "--shard", "3/3", *opts, code=2).count("shard index runs from 0 to 2")
    assert "must look like I/N" in invoke("features", "--shard", "1", *opts, code=2)


def test_the_local_executor_extracts_in_shards(tmp_path, synthetic_dataset, monkeypatch):
    _, root = synthetic_dataset
    monkeypatch.chdir(tmp_path)
    out = invoke("features", "--params", str(PARAMS), "--dataset", "synthetic", "--shards", "2", "--quiet",
                 *sets(tmp_path, root))
    cfg = make_config(tmp_path, root)
    for split in ("train", "val"):
        assert f"{split}: {cache.cache_dir(cfg, split)}" in out
        assert cache.is_valid(cache.cache_dir(cfg, split), cache.expected_meta(cfg, split))


def test_the_benchmark_runs_its_matrix_and_reuses_finished_runs(tmp_path, synthetic_dataset, monkeypatch):
    _, root = synthetic_dataset
    monkeypatch.chdir(tmp_path)
    args = ["benchmark", "--params", str(PARAMS), "--dataset", "synthetic", "--method", "kmeans", "--seeds", "0,1",
            "--quiet", *sets(tmp_path, root)]
    out = invoke(*args)
    assert "2 runs, 0 already done (same config), 2 to run" in out and "synthetic kmeans seed 1: mIoU" in out
    metrics = json.loads((tmp_path / "runs/synthetic/kmeans/seed1/metrics.json").read_text())
    again = invoke(*args)
    assert "2 already done (same config), 0 to run" in again
    assert f"synthetic kmeans seed 1: mIoU {metrics['miou']:.2f}" in again


def test_slurm_without_slurm_is_a_clear_error(tmp_path, synthetic_dataset, monkeypatch):
    import shutil

    _, root = synthetic_dataset
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)  # no srun on PATH
    out = invoke("ablate", "--params", str(PARAMS), "--dataset", "synthetic", "--prototypes", "2", "--seeds", "0",
                 "--executor", "slurm", "--quiet", *sets(tmp_path, root), code=2)
    assert "--executor slurm: no Slurm here" in out
    assert "choose one of ['local', 'slurm']" in invoke("ablate", "--params", str(PARAMS), "--prototypes", "2",
                                                         "--executor", "ray", code=2)


# ------------------------------------------------------------------------------------ a real Slurm + MLflow

WHY_NOT = local_cluster.unavailable()


@pytest.fixture(scope="module")
def cluster():
    """Slurm with accounting and MLflow on PostgreSQL, all on 127.0.0.1, for this module's Slurm tests."""
    if WHY_NOT:
        pytest.skip(f"no local Slurm + MLflow server: {WHY_NOT}")
    with local_cluster.local_cluster() as (slurm, server, services):
        started = list(services.started)
        yield slurm, server, services
    assert [s.name for s in started if s.process.poll() is None] == []  # every daemon it started has exited


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One 'shared filesystem' for the module's Slurm tests: cache, runs, logs."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture
def on_cluster(cluster, shared, synthetic_dataset, monkeypatch):
    slurm, server, _ = cluster
    _, root = synthetic_dataset
    for key, value in slurm.env().items():
        monkeypatch.setenv(key, value)  # sbatch, sacct, squeue (submitit's calls) find this cluster
    monkeypatch.chdir(shared)
    # one training thread: a task gets 1 CPU (--cpus-per-task 1), and 2 threads on 1 CPU run many times slower
    overrides = {"features.batch_size": 1, "run.tracking_uri": server.uri, "run.experiment": "cluster-test",
                 "run.train_threads": 1}
    return slurm, server, root, overrides


def slurm_options(shared: Path) -> list[str]:
    return ["--executor", "slurm", "--logs", str(shared / "logs"), "--time", "10", "--cpus-per-task", "1"]


def jobs_in_accounting(slurm) -> list[str]:
    return [line for line in slurm.run("sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "now-1hour").split() if line]


def test_slurm_shards_and_merge_equal_the_serial_entry(on_cluster, shared, tmp_path):
    _, _, root, overrides = on_cluster
    features = ["features", "--params", str(PARAMS), "--dataset", "synthetic", "--split", "train", "--shards", "2",
                "--quiet", *slurm_options(shared), *sets(shared, root, **overrides)]
    out = invoke(*features)
    assert "features-synthetic-train: submitted Slurm job" in out and "(2 tasks, at most 2 at once)" in out
    assert "features-synthetic-train-merge: submitted Slurm job" in out and "after afterok:" in out
    sharded = make_config(shared, root, **overrides)
    serial = make_config(tmp_path, root, **{**overrides, "features.cache_dir": str(tmp_path / "serial")})
    ensure_features(serial, "train", progress=False)
    assert entry_bytes(sharded, "train") == entry_bytes(serial, "train")  # 3 images: shards of 2 and 1
    assert not (cache.weights_dir(sharded, "train") / ".shards").exists()
    assert "submitted" not in invoke(*features)  # all there: nothing submitted


def _nested(server, parent_name: str) -> tuple[str, list[tuple]]:
    import mlflow

    mlflow.set_tracking_uri(server.uri)
    runs = mlflow.search_runs(experiment_names=["cluster-test"])
    (parent,) = runs[runs["tags.mlflow.runName"] == parent_name]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == parent]
    return parent, sorted(zip(nested["tags.mlflow.runName"], nested["tags.config_hash"], nested["tags.seed"],
                              nested["metrics.miou"].fillna(-1).round(6)))


def test_slurm_sweep_gives_the_local_rows_and_nested_runs_and_reruns_submit_nothing(on_cluster, shared):
    slurm, server, root, overrides = on_cluster
    sweep = ["ablate", "--params", str(PARAMS), "--dataset", "synthetic", "--prototypes", "2,3", "--seeds", "0,1",
             "--quiet", *sets(shared, root, **overrides)]
    invoke(*sweep, "--runs-dir", "runs/local", "--out", "local.csv")
    _, local_runs = _nested(server, "ablate-synthetic-prototypes")
    out = invoke(*sweep, "--runs-dir", "runs/slurm", "--out", "slurm.csv", "--jobs", "2", *slurm_options(shared),
                 "--set", "run.experiment=cluster-test-slurm")
    assert "ablate-prototypes: submitted Slurm job" in out and "4 tasks, at most 2 at once" in out
    local, on_slurm = pd.read_csv(shared / "local.csv"), pd.read_csv(shared / "slurm.csv")
    same = ["dataset", "split", "axis", "value", "seed", "miou", "acc", "concepts_per_image_mean", "final_loss",
            "torch_threads", "train_steps", "config_hash"]
    assert len(local) == 4 and local[same].equals(on_slurm[same])  # the same numbers, bit for bit
    assert on_slurm.run.str.startswith("runs/slurm/").all()

    import mlflow

    mlflow.set_tracking_uri(server.uri)
    runs = mlflow.search_runs(experiment_names=["cluster-test-slurm"])
    (parent,) = runs[runs["tags.kind"] == "sweep"]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == parent]
    slurm_runs = sorted(zip(nested["tags.mlflow.runName"], nested["tags.config_hash"], nested["tags.seed"],
                            nested["metrics.miou"].fillna(-1).round(6)))
    assert len(slurm_runs) == 8 and slurm_runs == local_runs  # train + evaluate per point x seed, nested alike

    before = jobs_in_accounting(slurm)
    again = invoke(*sweep, "--runs-dir", "runs/slurm", "--out", "again.csv", "--jobs", "2", *slurm_options(shared),
                   "--set", "run.experiment=cluster-test-slurm")
    assert "4 of 4 runs already done" in again and "submitted" not in again
    assert jobs_in_accounting(slurm) == before
    assert pd.read_csv(shared / "again.csv")[same].equals(on_slurm[same])


def test_slurm_benchmark_gives_the_local_metrics(on_cluster, shared):
    _, _, root, overrides = on_cluster
    args = ["benchmark", "--params", str(PARAMS), "--dataset", "synthetic", "--method", "kmeans", "--seeds", "0,1",
            "--quiet", *sets(shared, root, **overrides)]
    invoke(*args, "--set", "run.runs_dir=runs/bench-local")
    out = invoke(*args, "--set", "run.runs_dir=runs/bench-slurm", "--jobs", "2", *slurm_options(shared))
    assert "benchmark: submitted Slurm job" in out and "2 tasks, at most 2 at once" in out
    for seed in (0, 1):
        local, remote = (json.loads((shared / f"runs/{where}/synthetic/kmeans/seed{seed}/metrics.json").read_text())
                         for where in ("bench-local", "bench-slurm"))
        assert remote["miou"] == local["miou"] and remote["config_hash"] == local["config_hash"]


def _kill_when_running(slurm, name: str, box: dict, timeout: float = 120) -> None:
    """SIGKILL the task of the first job called ``name`` once it runs, as the kernel's OOM killer or a failing
    node would (a plain scancel sends SIGTERM first, which submitit's jobs ignore while they finish); records
    which job and when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "done" not in box:
        running = {job for job, job_name, state in (line.split() for line in slurm.run(
            "squeue", "-h", "-o", "%i %j %T", check=False).splitlines()) if job_name == name and state == "RUNNING"}
        steps = slurm.run("squeue", "-h", "-s", "-o", "%i", check=False).split()  # 12_0.0: a task's srun step
        job = next((j for j in sorted(running) if f"{j}.0" in steps), None)
        if job is not None:
            slurm.run("scancel", "--signal=KILL", job)  # every step of the job but its batch script
            box["killed"] = (job, time.monotonic())
            return
        time.sleep(0.2)


def _in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        finally:
            box["done"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_a_killed_point_fails_with_its_log_within_a_bounded_time(on_cluster, shared):
    slurm, _, root, overrides = on_cluster
    sweep = ["ablate", "--params", str(PARAMS), "--dataset", "synthetic", "--seeds", "0", "--quiet", "--runs-dir",
             "runs/kill", *sets(shared, root, **overrides), "--set", "run.experiment=cluster-test-kill"]
    invoke(*sweep, "--prototypes", "3")  # the default point, here: the sweep below submits only prototypes=5
    thread, box = _in_thread(runner.invoke, app, [*sweep, "--prototypes", "5", *slurm_options(shared)])
    kill: dict = {}
    _kill_when_running(slurm, "ablate-prototypes", kill)
    thread.join(180)
    assert "killed" in kill and "done" in box, "the job was never seen running, or the sweep never returned"
    seconds, (job, _) = box["done"] - kill["killed"][1], kill["killed"]
    result = box["result"]
    assert result.exit_code == 2, result.output
    assert "1 of 1 Slurm job(s) failed" in result.output, result.output
    line = f"prototypes=5 seed 0: Slurm job {job} ended without a result (CANCELLED"
    assert f"failed: {line}" in result.output  # said when seen, then in the error
    log = result.output.split(line)[-1].split("log: ")[1].split(" (stdout")[0]
    assert Path(log).is_file() and log.endswith(f"{job}_0_log.err")
    assert seconds < 60, f"the failure took {seconds:.0f} s to be reported"
    point = shared / "runs/kill/prototypes/prototypes=5/synthetic/acseg/seed0"
    assert not (point / "metrics.json").exists() and not (point / "model.pt").exists()


def test_a_killed_shard_leaves_no_merged_entry(on_cluster, shared, tmp_path):
    slurm, _, root, overrides = on_cluster
    overrides = {**overrides, "features.cache_dir": str(tmp_path / "cache")}
    cfg = make_config(shared, root, **overrides)
    extract_shard(cfg, "train", 0, 2, progress=False)  # shard 0 is there: only shard 1 is submitted
    thread, box = _in_thread(runner.invoke, app, [
        "features", "--params", str(PARAMS), "--dataset", "synthetic", "--split", "train", "--shards", "2",
        "--quiet", *slurm_options(shared), *sets(shared, root, **overrides)])
    kill: dict = {}
    _kill_when_running(slurm, "features-synthetic-train", kill)
    thread.join(180)
    assert "killed" in kill and "done" in box
    result = box["result"]
    assert result.exit_code == 2, result.output
    assert "(1 task)" in result.output and "features synthetic/train shard 1/2: Slurm job" in result.output
    assert f"{kill['killed'][0]}_0_log.err" in result.output
    assert "merge of 2 shards: not run (cancelled: a shard failed); no entry written" in result.output
    assert not cache.is_valid(cache.cache_dir(cfg, "train"), cache.expected_meta(cfg, "train"))
    assert missing_shards(cfg, "train", 2) == [1]  # shard 0 is kept for the next run
    deadline = time.monotonic() + 30
    while slurm.run("squeue", "-h", "-o", "%i").strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not slurm.run("squeue", "-h", "-o", "%i").strip()  # the merge job is not left waiting
