"""Predictions -> cluster ids: segments carry clusters, unusable segments never win, the CRF path agrees."""

import numpy as np
import torch

from acseg.crf import CRFParams, dense_crf
from bench.evaluate import Prediction


def test_segments_map_to_their_clusters_and_unused_segments_never_win():
    scores = torch.zeros(1, 3, 4, 5)
    scores[0, 0, :, :2] = 1.0
    scores[0, 1, :, 2:] = 1.0
    scores[0, 2] = 5.0  # the highest everywhere, but it has no cluster (-1)
    pred = Prediction(scores, torch.tensor([[7, 3, -1]]))
    clusters = pred.clusters()
    assert (clusters[0, :, :2] == 7).all() and (clusters[0, :, 2:] == 3).all()


def test_identity_segments_are_the_argmax():
    scores = torch.randn(2, 4, 6, 6)
    assert torch.equal(Prediction(scores).clusters(), scores.argmax(1))


def test_crf_path_keeps_a_clean_prediction_that_agrees_with_the_image():
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = 255
    scores = torch.full((1, 3, 20, 30), -1.0)
    scores[0, 0, :, :15] = 1.0
    scores[0, 1, :, 15:] = 1.0
    scores[0, 2] = 3.0  # unusable segment with the highest score
    pred = Prediction(scores, torch.tensor([[4, 9, -1]]))
    with_crf = pred.clusters([dense_crf(image, torch.from_numpy(u), CRFParams()).numpy() for u in pred.crf_unary(5.0)])
    assert torch.equal(with_crf, pred.clusters())


def test_crf_evaluation_in_workers_equals_in_process_batch_for_batch():
    """The CRF of one batch runs in worker processes while the next is predicted: same confusion, same order."""
    from bench.datasets.base import DatasetSpec
    from bench.evaluate import evaluate
    from bench.features import CachedFeatures

    rng = np.random.default_rng(0)
    n, h, w, size = 11, 3, 4, (12, 16)  # two batches of 8 and 3: the pipelined path and its last batch
    names = [f"img{i}" for i in range(n)]
    images = {name: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for name in names}
    labels = {name: rng.integers(0, 3, size) for name in names}
    feats = CachedFeatures(torch.randn(n * h * w, 5, dtype=torch.float16), torch.zeros(n * h * w, 1),
                           torch.tensor([[h, w]] * n), names, {})
    spec = DatasetSpec(name="toy", title="toy", class_names=("a", "b", "c"), ignore_index=255, splits={}, how_to_get="")
    centroids = torch.randn(3, 5)

    def predict(features, out_size, _, names):
        scores = (features.float() @ centroids.T).permute(0, 3, 1, 2)
        return Prediction(torch.nn.functional.interpolate(scores, size=out_size, mode="bilinear"))

    def run(workers):
        order = []
        ev = evaluate(predict, feats, spec, labels.__getitem__, 3, torch.device("cpu"), progress=False,
                      on_batch=lambda names, c, l: order.append((list(names), c)), crf=CRFParams(iterations=3),
                      read_image=images.__getitem__, crf_alpha=3.0, crf_workers=workers)
        return ev, order

    (serial, serial_order), (parallel, parallel_order) = run(1), run(2)
    assert np.array_equal(serial.confusion, parallel.confusion) and serial.confusion.sum() == n * size[0] * size[1]
    assert [names for names, _ in parallel_order] == [names for names, _ in serial_order] == [names[:8], names[8:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(serial_order, parallel_order))


def test_one_pass_over_several_predictors_equals_one_pass_each_with_and_without_crf():
    """evaluate_all reads features and labels once and builds each image's CRF kernels once for every predictor
    (of any number of segments): the confusion of each equals its own evaluation."""
    from bench.datasets.base import DatasetSpec
    from bench.evaluate import evaluate, evaluate_all
    from bench.features import CachedFeatures

    rng = np.random.default_rng(1)
    n, h, w, size = 5, 3, 4, (12, 16)
    names = [f"img{i}" for i in range(n)]
    images = {name: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for name in names}
    labels = {name: rng.integers(0, 3, size) for name in names}
    feats = CachedFeatures(torch.randn(n * h * w, 5, dtype=torch.float16), torch.zeros(n * h * w, 1),
                           torch.tensor([[h, w]] * n), names, {})
    spec = DatasetSpec(name="toy", title="toy", class_names=("a", "b", "c"), ignore_index=255, splits={}, how_to_get="")

    def predictor(k, seed):
        centroids = torch.randn(k, 5, generator=torch.Generator().manual_seed(seed))

        def predict(features, out_size, _, names):
            scores = (features.float() @ centroids.T).permute(0, 3, 1, 2)
            segments = torch.arange(k).remainder(3).expand(features.shape[0], k)  # k segments onto 3 clusters
            return Prediction(torch.nn.functional.interpolate(scores, size=out_size, mode="bilinear"), segments)

        return predict

    predicts = {"a": predictor(3, 0), "b": predictor(4, 1), "c": predictor(3, 2)}
    for crf in (None, CRFParams(iterations=2)):
        together = evaluate_all(predicts, feats, spec, labels.__getitem__, dict.fromkeys(predicts, 3),
                                torch.device("cpu"), progress=False, crf=crf, read_image=images.__getitem__,
                                crf_alpha=3.0, crf_workers=2)
        for key, predict in predicts.items():
            alone = evaluate(predict, feats, spec, labels.__getitem__, 3, torch.device("cpu"), progress=False,
                             crf=crf, read_image=images.__getitem__, crf_alpha=3.0, crf_workers=1)
            assert np.array_equal(together[key].confusion, alone.confusion), (key, crf)
            assert together[key].segments_per_image == alone.segments_per_image
