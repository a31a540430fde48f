"""ACSeg's investigated options run end to end on the synthetic dataset with a random ViT (both feature types
cached by one extraction): the loss's graph (k-NN, thresholded; on keys or both) and the classifier reading other
features than the generator (keys, both)."""

import pytest

from tests.conftest import make_config


@pytest.fixture
def cached(tmp_path, synthetic_dataset, monkeypatch):
    from bench.runs import run_features

    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)
    spec, root = synthetic_dataset
    base = {"data.local_copy": str(root), "backbone.name": "vit_small_patch8_224.dino", "backbone.weights": "random",
            "backbone.weights_sha256": None, "features.height": 32, "features.width": 40,
            "features.cache_dir": str(tmp_path / "cache"), "run.runs_dir": str(tmp_path / "runs"),
            "acseg.prototypes": 3, "acseg.classifier.n_classes": 3, "acseg.classifier.n_init": 1,
            "acseg.train.pixel_samples": 12, "acseg.graph.k": 3}
    cfg = make_config("synthetic", **base)
    for split in ("train", "val"):
        run_features(cfg, split, progress=False)
    return base


@pytest.mark.parametrize("options", [
    {"acseg.graph.kind": "knn", "acseg.graph.features": "keys"},
    {"acseg.graph.kind": "threshold", "acseg.graph.features": "both"},
    {"acseg.classifier.region_features": "keys", "acseg.classifier.raw_regions": False},
    {"acseg.classifier.region_features": "both", "acseg.classifier.overcluster_k": 12, "acseg.prototypes": 5},
    {"features.type": "keys", "acseg.graph.features": "tokens", "acseg.classifier.region_features": "tokens"},
    {"acseg.intensity_temperature": 0.1},
    {"acseg.prototype_scale": 100.0, "acseg.train.precision": "float64"},
])
def test_an_option_trains_and_evaluates(cached, options):
    import torch

    from bench.runs import load_fitted, run_evaluate, run_train

    cfg = make_config("synthetic", **{**cached, **options})
    run_train(cfg, "acseg", 0, progress=False)
    metrics = run_evaluate(cfg, "acseg", 0, progress=False)
    assert 0 <= metrics["miou"] <= 100
    model, facts = load_fitted(cfg, "acseg", 0, torch.device("cpu"))
    wanted = cfg.acseg.classifier.region_features
    assert model.class_centroids.shape[1] == (2 * 384 if wanted == "both" else 384) == facts["region_dim"]
    if wanted != cfg.features.type:
        assert set(facts["region_means"]) == ({"tokens", "keys"} if wanted == "both" else {wanted})


def test_weight_averaging_returns_the_mean_of_the_last_steps_weights(cached):
    """acseg.train.average_last: the model trained is the uniform average of the weights after each of the last
    steps (here the last 2 of 4), and the last step's weights without it."""
    import torch

    from bench.features import load_features
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bench.methods.acseg import train_generator

    snapshots = []

    def snapshot(optimizer, args, kwargs):
        snapshots.append([p.detach().clone() for group in optimizer.param_groups for p in group["params"]])

    results = {}
    for average_last in (0.0, 0.5):
        cfg = make_config("synthetic", **{**cached, "acseg.train.steps": 4, "acseg.train.average_last": average_last})
        train = load_features(cfg, "train")
        snapshots.clear()
        handle = register_optimizer_step_post_hook(snapshot)
        try:
            model, _ = train_generator(cfg, 0, train, 3, torch.device("cpu"), progress=False)
        finally:
            handle.remove()
        trained = [p for p in model.parameters() if p.requires_grad]
        results[average_last] = trained
        assert len(snapshots) == 4
        expected = snapshots[-1] if not average_last else [torch.stack(ps).mean(0) for ps in zip(*snapshots[-2:])]
        assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(trained, expected))
    assert any(not torch.equal(a, b) for a, b in zip(results[0.0], results[0.5]))


def test_the_intensity_temperature_reaches_the_loss_and_zero_keeps_the_hard_max(cached, monkeypatch):
    import torch

    import bench.methods.acseg as acseg_method
    from bench.features import load_features

    seen, real = [], acseg_method.concept_loss

    def recording(*args, **kwargs):
        seen.append(kwargs.get("intensity_temperature"))
        return real(*args, **kwargs)

    monkeypatch.setattr(acseg_method, "concept_loss", recording)
    for tau in (0.0, 0.1):
        cfg = make_config("synthetic", **{**cached, "acseg.train.steps": 2, "acseg.intensity_temperature": tau})
        acseg_method.train_generator(cfg, 0, load_features(cfg, "train"), 3, torch.device("cpu"), progress=False)
    assert seen == [None, None, 0.1, 0.1]
