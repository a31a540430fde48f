import numpy as np
import pytest
import torch

from acseg.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    hungarian_match,
    hungarian_miou,
    matched_disagreement,
    overclustering_miou,
)


def test_hungarian_recovers_a_permuted_labelling_exactly():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (4, 30, 40), generator=g)
    perm = torch.randperm(6, generator=g)
    clusters = perm[labels]
    m = confusion_matrix(clusters, labels, 6, 6, ignore_index=255)
    mapping = hungarian_match(m)
    assert (mapping[perm.numpy()] == np.arange(6)).all()
    scores = hungarian_miou(m)
    assert scores.miou == pytest.approx(100.0) and scores.accuracy == pytest.approx(100.0)


def test_void_pixels_are_ignored():
    labels = torch.tensor([[0, 1, 11, 11]])
    clusters = torch.tensor([[0, 1, 0, 1]])
    m = confusion_matrix(clusters, labels, 2, 2, ignore_index=11)
    assert m.sum() == 2 and hungarian_miou(m).miou == pytest.approx(100.0)


def test_streaming_accumulation_equals_one_matrix():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (6, 10, 10), generator=g)
    clusters = torch.randint(0, 5, (6, 10, 10), generator=g)
    acc = ConfusionAccumulator(5, 5, ignore_index=255)
    for c, l in zip(clusters, labels):
        acc.update(c, l)
    assert torch.equal(acc.matrix, confusion_matrix(clusters, labels, 5, 5, 255))


def test_known_miou_and_accuracy():
    # 2 classes; cluster 0 -> class 0 with 3 right and 1 wrong; cluster 1 -> class 1 with 4 right
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    clusters = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    s = hungarian_miou(confusion_matrix(clusters, labels, 2, 2, 255))
    assert s.accuracy == pytest.approx(700 / 8)
    assert s.per_class_iou == pytest.approx([75.0, 80.0])
    assert s.miou == pytest.approx(77.5)


def test_absent_classes_do_not_count_and_overclustering_uses_majority():
    labels = torch.tensor([0, 0, 1, 1])
    clusters = torch.tensor([0, 1, 2, 3])  # 4 clusters for 3 classes, class 2 absent
    m = confusion_matrix(clusters, labels, 4, 3, 255)
    s = overclustering_miou(m)
    assert np.isnan(s.per_class_iou[2]) and s.miou == pytest.approx(100.0)
    assert hungarian_miou(m).miou < 100.0


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="labels outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 2, 2, ignore_index=255)


def test_matched_disagreement_ignores_the_names_and_counts_the_moved_items():
    a = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    assert matched_disagreement(a, (a + 1) % 3, 3) == 0.0  # the same partition under other names
    moved = torch.tensor([1, 1, 2, 2, 0, 0, 0, 1])  # renamed, and one item moved to another part
    assert matched_disagreement(a, moved, 3) == pytest.approx(1 / 8)
