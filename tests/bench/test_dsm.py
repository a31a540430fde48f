"""Deep Spectral Methods as a registered method: trained and evaluated end to end through bench.runs on the
synthetic dataset of tests/conftest.py (random cached features; a one-block random ViT for the crops variant)."""

import json

import pytest
import torch

from tests.bench.test_robustness import make_config, write_features


@pytest.fixture
def no_tracking(monkeypatch):
    """These tests are not about MLflow: they do not pay for it."""
    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)


def dsm(**changes) -> dict:
    """Overrides of the params' dsm section."""
    return {f"dsm.{k}": v for k, v in changes.items()}


def test_dsm_is_registered():
    from bench.methods import METHODS

    assert METHODS["dsm"].title == "Deep Spectral Methods"


@pytest.mark.parametrize("variant", [
    {},  # the published defaults: 5 eigenvectors, 15 segments, region means
    {"adaptive": True, "colour_weight": 10.0, "pca_dim": 4, "background": "border", "centre": True,
     "colour_neighbours": [5, 3], "segment_n_init": 2, "n_clusters": 4},  # 2-3 segments per image: K=4
])
def test_dsm_trains_and_evaluates_end_to_end_with_and_without_crf(tmp_path, synthetic_dataset, no_tracking,
                                                                  variant):
    from bench.runs import eval_dir, load_fitted, run_dir, run_evaluate, run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **dsm(**variant))
    settings = cfg.dsm
    write_features(cfg, "train", spec, root)
    write_features(cfg, "val", spec, root)
    out = run_train(cfg, "dsm", 0, progress=False)
    assert out == run_dir(cfg, "dsm", 0) and (out / "model.pt").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    k = variant.get("n_clusters", 11)
    assert summary["segments"] >= k and summary["final_loss"] >= 0
    model, facts = load_fitted(cfg, "dsm", 0, torch.device("cpu"))
    assert facts["dsm"] == settings.model_dump() and facts["seed"] == 0
    assert model.centroids.shape == (k - (variant.get("background") == "border"), variant.get("pca_dim") or 16)
    for crf in (False, True):
        metrics = run_evaluate(cfg, "dsm", 0, progress=False, crf=crf)
        assert metrics["method"] == "dsm" and metrics["n_images"] == 2 and metrics["n_clusters"] == k
        assert 0 <= metrics["miou"] <= 100
        assert 1 <= metrics["concepts_per_image_mean"] <= 15
        assert (eval_dir(cfg, "dsm", 0, crf) / "metrics.json").is_file()


def test_dsm_crops_reencode_each_segment_with_the_backbone(tmp_path, synthetic_dataset, no_tracking, monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    import bench.methods.dsm
    from bench.runs import load_fitted, run_evaluate, run_train

    def tiny_vit(cfg):  # a one-block ViT with the configured patch (14): a second, not seconds, per load
        torch.manual_seed(0)
        return VisionTransformer(img_size=28, patch_size=14, embed_dim=24, depth=1, num_heads=2,
                                 dynamic_img_size=True), "tiny-test"

    monkeypatch.setattr(bench.methods.dsm, "load_backbone", tiny_vit)  # where DSM's crops load it
    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **dsm(regions="crops", crop_size=28, segments=4))
    write_features(cfg, "train", spec, root)
    write_features(cfg, "val", spec, root)
    run_train(cfg, "dsm", 0, progress=False)
    _, facts = load_fitted(cfg, "dsm", 0, torch.device("cpu"))
    assert facts["embedding_dim"] == 24  # the backbone's [CLS], not the 16-d cached features
    assert 0 <= run_evaluate(cfg, "dsm", 0, progress=False)["miou"] <= 100


def test_seeds_change_the_segments_deterministically(tmp_path, synthetic_dataset, no_tracking):
    from bench.runs import load_fitted, run_train

    spec, root = synthetic_dataset
    cfg = make_config(tmp_path, root, **dsm(segments=6))
    write_features(cfg, "train", spec, root)
    centroids = {}
    for seed, tag in ((0, "a"), (0, "b"), (1, "c")):
        run_train(cfg, "dsm", seed, progress=False)
        centroids[tag] = load_fitted(cfg, "dsm", seed, torch.device("cpu"))[0].centroids
    assert torch.equal(centroids["a"], centroids["b"]) and not torch.equal(centroids["a"], centroids["c"])
