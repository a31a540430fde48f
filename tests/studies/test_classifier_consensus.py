import pytest
import torch

from studies.classifier_consensus import (
    adjusted_rand_index,
    co_association,
    consensus_partition,
    medoid_restart,
    partition_centroids,
)


def _planted_restarts():
    """Ten clusterings of 12 items: seven find the planted 3-cluster partition (under other names), three merge two
    of its clusters and split the third."""
    truth = torch.arange(3).repeat_interleave(4)
    names = ([0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0], [1, 0, 2], [0, 1, 2])
    good = [torch.tensor(p)[truth] for p in names]
    bad = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    return truth, torch.stack(good[:3] + [bad] * 3 + good[3:])


def test_adjusted_rand_index_matches_a_hand_example_and_ignores_names():
    a = torch.tensor([0, 0, 1, 1])
    # pairs: 6; together in a: 2, in b: 1, in both: 1; expected 2 * 1 / 6 = 1/3 -> (1 - 1/3) / (1.5 - 1/3) = 4/7
    assert adjusted_rand_index(a, torch.tensor([0, 0, 1, 2])) == pytest.approx(4 / 7)
    assert adjusted_rand_index(a, torch.tensor([5, 5, 2, 2])) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 4, (20000,), generator=g), torch.randint(0, 4, (20000,), generator=g)
    assert abs(adjusted_rand_index(x, y)) < 0.01  # unrelated partitions


def test_medoid_restart_is_one_of_the_majority_solutions():
    truth, labelings = _planted_restarts()
    assert adjusted_rand_index(labelings[medoid_restart(labelings)], truth) == pytest.approx(1.0)


def test_co_association_consensus_recovers_the_planted_partition():
    truth, labelings = _planted_restarts()
    co = co_association(labelings)
    assert torch.allclose(co.diagonal(), torch.ones(12)) and torch.allclose(co, co.T)
    assert co[0, 4] == pytest.approx(0.3)  # planted apart, merged by the three bad restarts
    labels = consensus_partition(labelings, 3)
    assert labels.min() == 0 and labels.max() == 2
    assert adjusted_rand_index(labels, truth) == pytest.approx(1.0)


def test_partition_centroids_class_each_member_into_its_own_cluster():
    from acseg.classifier import classify_concepts

    g = torch.Generator().manual_seed(0)
    directions = torch.eye(4)[:3] * 5
    labels = torch.arange(3).repeat_interleave(10)
    x = directions[labels] + 0.1 * torch.randn(30, 4, generator=g)
    centroids = partition_centroids(x, labels, 3)
    assert torch.allclose(centroids.norm(dim=-1), torch.ones(3))
    assert torch.equal(classify_concepts(x, centroids), labels)
