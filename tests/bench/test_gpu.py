"""`--device cuda` end to end on a tiny config (marker ``gpu``; skipped where ``torch.cuda.is_available()`` is
false): the backbone's mixed-precision (float16 autocast) features agree with its float32 features within the
tolerances below, and training and evaluation of every method run on the GPU and give their metrics back.

Run by ``bash pipelines/gpu_check.sh`` on a GPU machine. ``ACSEG_GPU_TEST_DEVICE=cpu`` runs the same code on the
CPU (a dry run of the tests themselves: the two feature caches are then both float32, so they agree exactly).

Tolerances for float16 autocast against float32 (both stored as float16 in the cache), per cache entry: the cosine
between a patch's two feature vectors at least 0.999 on average and 0.99 at worst, the relative (Frobenius)
difference of the whole entry at most 2 %, the [CLS] attention (values up to ~0.2) within 0.01. On the CPU,
float16 autocast of the same images differs from float32 by a mean cosine of 1 - 1e-6 and 0.15 % relative, so the
tolerances leave an order of magnitude for the GPU's kernels.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.cli import app
from tests.conftest import WEIGHTS_FILE, WEIGHTS_SHA256, shared_paths

DEVICE = os.environ.get("ACSEG_GPU_TEST_DEVICE", "cuda")
COSINE_MEAN, COSINE_MIN, RELATIVE, ATTENTION_ABS = 0.999, 0.99, 0.02, 0.01

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is false); ACSEG_GPU_TEST_DEVICE=cpu "
                              "dry-runs these tests on the CPU"),
]

ROOT = Path(__file__).parents[2]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def workdir(tmp_path, monkeypatch, mini_camvid):
    """The repository's params for 8 real CamVid train and 4 val images at 112x154 with the real DINOv2 weights,
    tiny ACSeg, k-means and STEGO, in a temp cwd."""
    spec, root = mini_camvid
    _, weights_dir = shared_paths()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["benchmark"].update(datasets=[spec.name], seeds=[0])
    params["datasets"] = {spec.name: {"data": {"local_copy": str(root)}}}
    params["ablations"]["dataset"] = spec.name
    params["backbone"].update(weights=WEIGHTS_FILE, weights_sha256=WEIGHTS_SHA256, weights_dir=str(weights_dir))
    params["features"].update(height=112, width=154, cache_dir=str(tmp_path / "cache"))
    params["acseg"].update(prototypes=4, depth=1, width=32, heads=2, mlp_width=64)
    params["acseg"]["train"].update(steps=6, batch_size=2, warmup_steps=1, log_every=2, pixel_samples=64)
    params["acseg"]["classifier"].update(n_classes=4)
    params["kmeans"].update(k=4, max_points=5000)
    params["stego"].update(knn=3, knn_draw=2, steps=4, batch_size=4, feature_samples=3, neg_samples=2, log_every=2)
    params["crf"]["workers"] = 2
    params["run"].update(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _entry(cache_dir: Path, split: str, feature_type: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    [path] = Path(cache_dir).glob(f"*/{split}/*/*/{feature_type}-112x154/features.safetensors")
    return load_file(str(path))


def _used_the_gpu() -> bool:
    return DEVICE.startswith("cpu") or torch.cuda.max_memory_allocated() > 0


def test_mixed_precision_features_agree_with_float32(workdir):
    import torch.nn.functional as F

    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    invoke("features", "--device", DEVICE, "--quiet")  # float16 autocast on a GPU
    assert _used_the_gpu()
    invoke("features", "--device", "cpu", "--quiet", "--set", f"features.cache_dir={workdir / 'cache-fp32'}")
    for split in ("train", "val"):
        for feature_type in ("tokens", "keys"):
            mixed, full = _entry(workdir / "cache", split, feature_type), _entry(workdir / "cache-fp32", split,
                                                                                  feature_type)
            assert torch.equal(mixed["grids"], full["grids"])
            a, b = mixed["features"].float(), full["features"].float()
            cosine = F.cosine_similarity(a, b, dim=-1)
            assert cosine.mean() >= COSINE_MEAN and cosine.min() >= COSINE_MIN, (split, feature_type)
            assert (a - b).norm() / b.norm() <= RELATIVE, (split, feature_type)
            attention = (mixed["cls_attention"].float() - full["cls_attention"].float()).abs().max()
            assert attention <= ATTENTION_ABS, (split, feature_type)


def test_training_and_evaluation_run_and_give_metrics(workdir):
    invoke("features", "--device", DEVICE, "--quiet")
    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for method in ("acseg", "kmeans", "stego"):
        invoke("train", "--method", method, "--seed", 0, "--device", DEVICE, "--quiet")
        out = invoke("evaluate", "--method", method, "--seed", 0, "--device", DEVICE, "--quiet")
        assert f"{method} seed 0: mIoU" in out
        metrics = json.loads((workdir / f"runs/camvid_mini/{method}/seed0/metrics.json").read_text())
        assert 0 <= metrics["miou"] <= 100 and 0 <= metrics["acc"] <= 100, method
    assert _used_the_gpu()
    out = invoke("evaluate", "--method", "acseg", "--seed", 0, "--crf", "--device", DEVICE, "--quiet")
    assert "acseg + CRF seed 0: mIoU" in out
    metrics = json.loads((workdir / "runs/crf/camvid_mini/acseg/seed0/metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 100
    assert "acseg seed 0: mIoU" in invoke("evaluate", "--method", "acseg", "--seed", 0, "--device", "cpu", "--quiet")
