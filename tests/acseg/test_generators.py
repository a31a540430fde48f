import pytest
import torch

from acseg.concept_generator import ConceptGenerator
from acseg.generators import (acg_concepts, adaptive_kmeans_concepts, kmeans_concepts, segment_scores,
                              spectral_concepts)
from acseg.spectral import knn_colour_affinity


def planted_pixels(groups=3, n=48, dim=12, images=2, seed=0):
    """Each image: ``groups`` sets of patches around orthogonal directions (cosine 0 between sets)."""
    g = torch.Generator().manual_seed(seed)
    truth = (torch.arange(n) % groups).expand(images, n)
    directions = torch.eye(dim)[:groups]
    return directions[truth] + 0.05 * torch.randn(images, n, dim, generator=g), truth


def same_partition(a, b):
    return all(len(set(b[a == c].tolist())) == 1 for c in a.unique()) and len(a.unique()) == len(b.unique())


GENERATORS = {
    "acg": lambda x: acg_concepts(ConceptGenerator(x.shape[-1], n_prototypes=5, depth=1, heads=2, mlp_width=8), x),
    "kmeans": lambda x: kmeans_concepts(x, 5, seed=0),
    "adaptive_modularity": lambda x: adaptive_kmeans_concepts(x, 2, 6, "modularity"),
    "adaptive_eigengap": lambda x: adaptive_kmeans_concepts(x, 2, 6, "eigengap"),
    "spectral": lambda x: spectral_concepts(x, 5, 5),
    "spectral_eigengap": lambda x: spectral_concepts(x, None, 6),
    "spectral_colour": lambda x: spectral_concepts(x, 4, 4, extra_affinity=10 * knn_colour_affinity(
        torch.rand(x.shape[0], 6, 8, 3, generator=torch.Generator().manual_seed(0)), (5,), (1.0,))),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_returns_one_concept_id_per_patch(name):
    torch.manual_seed(0)
    x, _ = planted_pixels()
    ids = GENERATORS[name](x)
    assert ids.shape == (2, 48) and ids.dtype == torch.long and int(ids.min()) >= 0 and int(ids.max()) < 6


@pytest.mark.parametrize("criterion", ["modularity", "eigengap"])
def test_adaptive_kmeans_finds_the_planted_number_of_groups(criterion):
    for groups in (2, 3, 4):
        x, truth = planted_pixels(groups)
        ids = adaptive_kmeans_concepts(x, 2, 6, criterion, seed=0, n_init=3)
        for b in range(2):
            assert same_partition(ids[b], truth[b]), (criterion, groups)


def test_kmeans_and_spectral_recover_planted_groups():
    x, truth = planted_pixels(3)
    for ids in (kmeans_concepts(x, 3, seed=0, n_init=3), spectral_concepts(x, 3, 3, seed=0, n_init=3)):
        assert all(same_partition(ids[b], truth[b]) for b in range(2))


def test_spectral_segments_per_image_from_the_eigengap():
    x, truth = planted_pixels(3)
    ids = spectral_concepts(x, None, 6, seed=0, n_init=3)
    assert all(same_partition(ids[b], truth[b]) for b in range(2))


def test_segment_scores_partition_unity_and_keep_the_segments_at_their_own_grid():
    g = torch.Generator().manual_seed(0)
    segments = torch.randint(0, 4, (2, 5, 7), generator=g)
    same = segment_scores(segments, 6, (5, 7))
    assert torch.equal(same.argmax(1), segments)
    up = segment_scores(segments, 6, (23, 31))
    assert up.shape == (2, 6, 23, 31) and torch.allclose(up.sum(1), torch.ones(2, 23, 31))
    assert set(up.argmax(1).unique().tolist()) <= set(segments.unique().tolist())
