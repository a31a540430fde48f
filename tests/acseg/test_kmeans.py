import torch

from acseg.kmeans import assign, centroid_scores, kmeans


def blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    labels = torch.arange(3).repeat_interleave(50)
    return centres[labels] + 0.3 * torch.randn(150, 2, generator=g), labels


def same_partition(a, b):
    return all(len(set(b[a == c].tolist())) == 1 for c in a.unique())


def test_recovers_separated_blobs():
    x, labels = blobs()
    for cosine in (False, True):
        r = kmeans(x, 3, seed=0, cosine=cosine)
        assert same_partition(r.labels, labels) and same_partition(labels, r.labels)


def test_deterministic_for_a_seed():
    x, _ = blobs(1)
    a, b = kmeans(x, 4, seed=7), kmeans(x, 4, seed=7)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)


def test_assign_and_scores_agree_with_fit():
    x, _ = blobs(2)
    for cosine in (False, True):
        r = kmeans(x, 3, seed=0, cosine=cosine)
        assert torch.equal(assign(x, r.centroids, cosine), r.labels)
        assert torch.equal(centroid_scores(x, r.centroids, cosine).argmax(-1), r.labels)


def test_more_clusters_than_points_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="k-means needs"):
        kmeans(torch.zeros(2, 3), 5)


def test_kept_restarts_are_every_restart_and_the_best_is_the_lowest_inertia():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 5, generator=g)
    fit = kmeans(x, 6, seed=1, n_init=4, keep_restarts=True)
    assert [r.inertia for r in fit.restarts] == fit.inertias
    assert fit.inertia == min(fit.inertias)
    plain = kmeans(x, 6, seed=1, n_init=4)  # keeping them changes nothing else
    assert torch.equal(plain.labels, fit.labels) and plain.restarts == []


def test_cluster_means_are_weighted_means_and_an_empty_cluster_has_no_mass():
    from acseg.kmeans import cluster_means

    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    w = torch.tensor([1.0, 3.0, 2.0])
    means, mass = cluster_means(x * w[:, None], w, torch.tensor([0, 0, 2]), 3)
    assert torch.allclose(means, torch.tensor([[1.5, 0.0], [0.0, 0.0], [0.0, 4.0]]))
    assert mass.tolist() == [4.0, 0.0, 2.0]
