import pytest
import torch

from acseg.batched_kmeans import batched_kmeans
from acseg.kmeans import kmeans


def blob_images(ks=(2, 3, 4), n=60, seed=0):
    """One image per k: k separated blobs in 3-D, points shuffled; returns (x [B, n, 3], true labels [B, n])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[6.0, 0, 0], [0, 6.0, 0], [0, 0, 6.0], [-6.0, -6.0, -6.0]])
    xs, ys = [], []
    for k in ks:
        labels = torch.arange(n) % k
        labels = labels[torch.randperm(n, generator=g)]
        xs.append(centres[labels] + 0.3 * torch.randn(n, 3, generator=g))
        ys.append(labels)
    return torch.stack(xs), torch.stack(ys)


def same_partition(a, b):
    return all(len(set(b[a == c].tolist())) == 1 for c in a.unique()) and len(a.unique()) == len(b.unique())


@pytest.mark.parametrize("cosine", [False, True])
def test_every_image_gets_its_own_k_and_its_blobs(cosine):
    x, truth = blob_images()
    r = batched_kmeans(x, torch.tensor([2, 3, 4]), seed=0, n_init=3, cosine=cosine)
    assert r.labels.shape == truth.shape and r.centroids.shape == (3, 4, 3)
    for b, k in enumerate((2, 3, 4)):
        assert int(r.labels[b].max()) < k
        assert same_partition(r.labels[b], truth[b])


def test_deterministic_for_a_seed_and_restarts_never_worse():
    x, _ = blob_images(ks=(4, 4, 4), seed=1)
    x = x + torch.randn_like(x)  # overlapping blobs: restarts matter
    a, b = batched_kmeans(x, 4, seed=7), batched_kmeans(x, 4, seed=7)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    best = batched_kmeans(x, 4, seed=7, n_init=5)
    assert (best.inertia <= a.inertia + 1e-4).all()  # the first restart is the same draw as n_init=1


def test_inertia_matches_the_single_set_kmeans_objective():
    x, _ = blob_images(ks=(3,), seed=2)
    mine = batched_kmeans(x, 3, seed=0, n_init=3)
    theirs = kmeans(x[0], 3, seed=0, n_init=3)
    assert mine.inertia[0].item() == pytest.approx(theirs.inertia, rel=1e-4)


def test_k_outside_one_to_points_is_an_error():
    with pytest.raises(ValueError, match="1 <= k <= points"):
        batched_kmeans(torch.randn(2, 5, 3), 6)
    with pytest.raises(ValueError, match="1 <= k <= points"):
        batched_kmeans(torch.randn(2, 5, 3), torch.tensor([0, 2]))
