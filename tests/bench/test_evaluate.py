"""Predictions -> cluster ids: segments carry clusters, unusable segments never win, the CRF path agrees."""

import numpy as np
import torch

from acseg.crf import CRFParams
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
    with_crf = pred.clusters(CRFParams(), [image], alpha=5.0)
    assert torch.equal(with_crf, pred.clusters())
