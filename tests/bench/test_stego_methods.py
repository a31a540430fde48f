"""STEGO's three methods on random cached features: calibrated shifts are recorded with the repel fractions they
make, the k-means readout reuses the probe's training, the published variant keeps the published shifts, and how
often training logs never changes what it learns."""

import json

import pytest
import torch

from tests.bench.test_robustness import make_config, no_tracking, write_features  # noqa: F401

TINY_STEGO = {"stego.steps": 6, "stego.batch_size": 2, "stego.knn": 1, "stego.knn_draw": 1,
              "stego.feature_samples": 2, "stego.neg_samples": 1, "stego.calibration_batches": 3,
              "stego.probe_reseed_every": 2, "stego.kmeans_n_init": 1}


def _config(tmp_path, root, **more):
    sections = {f"{m}.{k.split('.', 1)[1]}": v for m in ("stego", "stego_kmeans", "stego_published")
                for k, v in {**TINY_STEGO, **more}.items()}
    return make_config(tmp_path, root, **sections, **{"kmeans.k": 0, "acseg.classifier.n_classes": 0})


def test_the_log_interval_does_not_change_what_training_learns(tmp_path, synthetic_dataset):
    from acseg.stego import knn_table
    from bench.features import load_features
    from bench.methods.stego import pooled_features, train_stego

    spec, root = synthetic_dataset
    cfg = _config(tmp_path, root)
    write_features(cfg, "train", spec, root)
    train = load_features(cfg, "train")
    knn = knn_table(pooled_features(train), 1)
    states = []
    for every in (1, 4):
        cfg_every = _config(tmp_path, root, **{"stego.log_every": every})
        model, history, _ = train_stego(cfg_every, 0, train, knn, 3, torch.device("cpu"), progress=False)
        states.append(model.state_dict())
        assert len(history.steps) == (6 if every == 1 else 3)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_calibrated_stego_records_its_shifts_and_the_kmeans_readout_reuses_its_training(
        tmp_path, synthetic_dataset, no_tracking, monkeypatch):  # noqa: F811
    import bench.methods.stego as stego
    from bench.runs import run_dir, run_evaluate, run_train

    spec, root = synthetic_dataset
    cfg = _config(tmp_path, root)
    for split in ("train", "val"):
        write_features(cfg, split, spec, root)
    run_train(cfg, "stego", 0, progress=False)
    summary = json.loads((run_dir(cfg, "stego", 0) / "train_summary.json").read_text())
    assert summary["shifts_mode"] == "calibrated" and set(summary["shifts"]) == {"self", "knn", "rand"}
    assert summary["calibration"]["repel"] == {"self": 0.7, "knn": 0.7, "rand": 0.9}
    for term in ("self", "knn", "rand"):  # the diagnostics the report shows
        assert 0 <= summary[f"attract_fraction_{term}"] <= 1 and f"feature_correlation_{term}" in summary
    assert 1 <= summary["probe_clusters_used"] <= 11

    def no_training(*args, **kwargs):
        raise AssertionError("stego_kmeans trained STEGO again instead of reusing the cached training")

    monkeypatch.setattr(stego, "train_stego", no_training)
    run_train(cfg, "stego_kmeans", 0, progress=False)
    probe, readout = (torch.load(run_dir(cfg, m, 0) / "model.pt", weights_only=False) for m in ("stego", "stego_kmeans"))
    assert torch.equal(probe["state_dict"]["head.linear.weight"], readout["state_dict"]["head.linear.weight"])
    assert readout["facts"]["readout"] == "kmeans"
    for method in ("stego", "stego_kmeans"):
        metrics = run_evaluate(cfg, method, 0, progress=False)
        assert 0 <= metrics["miou"] <= 100 and metrics["method"] == method


def test_the_published_variant_keeps_the_published_shifts(tmp_path, synthetic_dataset, no_tracking):  # noqa: F811
    from bench.runs import run_dir, run_train

    spec, root = synthetic_dataset
    cfg = _config(tmp_path, root)
    write_features(cfg, "train", spec, root)
    run_train(cfg, "stego_published", 0, progress=False)
    summary = json.loads((run_dir(cfg, "stego_published", 0) / "train_summary.json").read_text())
    assert summary["shifts_mode"] == "published"
    assert summary["shifts"] == {"self": cfg.stego_published.shift_self, "knn": cfg.stego_published.shift_knn,
                                 "rand": cfg.stego_published.shift_rand} == {"self": 0.08, "knn": 0.02, "rand": 0.66}


@pytest.mark.parametrize("sampling", ["continuous"])
def test_continuous_sampling_trains(tmp_path, synthetic_dataset, no_tracking, sampling):  # noqa: F811
    from bench.runs import run_train

    spec, root = synthetic_dataset
    cfg = _config(tmp_path, root, **{"stego.sampling": sampling, "stego.correlation_dropout": True})
    write_features(cfg, "train", spec, root)
    run_train(cfg, "stego", 0, progress=False)


def test_five_crop_training_encodes_each_images_crops_once_in_an_entry_of_their_own(
        tmp_path, synthetic_dataset, no_tracking):  # noqa: F811
    from bench import cache
    from bench.data import SegmentationSplit, resize_image
    from bench.features import FiveCropSplit, ensure_features, five_crop_features, five_crop_view
    from bench.runs import run_dir, run_evaluate, run_train

    spec, root = synthetic_dataset
    cfg = _config(tmp_path, root, **{"stego.five_crop_ratio": 0.5})
    for split in ("train", "val"):  # the crops are encoded by the config's (random) backbone: so are the splits
        ensure_features(cfg, split, progress=False)
    run_train(cfg, "stego", 0, progress=False)
    summary = json.loads((run_dir(cfg, "stego", 0) / "train_summary.json").read_text())
    assert summary["calibration"]["key"]["split"] == five_crop_view("train", 0.5) == "train+five_crop_0.5"
    assert 0 <= run_evaluate(cfg, "stego", 0, progress=False)["miou"] <= 100

    path = cache.cache_dir(cfg, five_crop_view("train", 0.5))
    assert cache.read_meta(path)["five_crop"] == {"split": "train", "ratio": 0.5}
    assert not path.is_relative_to(cache.weights_dir(cfg, "train"))  # not inside the features stage's output
    crops = five_crop_features(cfg, "train", 0.5, progress=False)  # read back, not extracted again
    names = [s.name for s in spec.samples(root, "train")]
    assert len(crops) == 5 * len(names) and crops.names[:5] == [
        f"{names[0]}#{c}" for c in ("top_left", "top_right", "bottom_left", "bottom_right", "centre")]

    # a view is its crop of the image (56 x 70: halves of 28 x 35), resized to the backbone's input size
    images = SegmentationSplit(spec, root, "train", with_labels=False)
    views = FiveCropSplit(images, 0.5, lambda hw: (28, 42))
    image = images[1][0]
    assert torch.equal(views[5 + 4][0], resize_image(image[:, 14:42, 17:52], (28, 42)))
    assert torch.equal(views[5 + 1][0], resize_image(image[:, 0:28, 35:70], (28, 42)))


def test_five_crops_at_the_whole_images_scale_are_encoded_at_half_the_input_size(tmp_path, synthetic_dataset):
    from bench.features import five_crop_features, five_crop_input_size

    spec, root = synthetic_dataset
    cfg = _config(tmp_path, root)  # a random ViT/14 at 56 x 70 (4 x 5 patches), the images' own size
    assert five_crop_input_size((28, 35), cfg, 14, 0.5, zoom=True) == (56, 70)
    assert five_crop_input_size((28, 35), cfg, 14, 0.5, zoom=False) == (28, 28)  # 2 x 2.5 patches, rounded
    zoomed, kept = (five_crop_features(cfg, "train", 0.5, zoom, progress=False) for zoom in (True, False))
    assert zoomed.grids.tolist()[0] == [4, 5] and kept.grids.tolist()[0] == [2, 2]
    assert len(zoomed) == len(kept) == 5 * len(spec.samples(root, "train"))
