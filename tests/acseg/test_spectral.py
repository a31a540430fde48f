import pytest
import torch

from acseg.classifier import concept_boxes
from acseg.generators import spectral_segments
from acseg.spectral import (border_segment, eigengap_count, knn_colour_affinity, laplacian_eigenvectors,
                            mask_boxes, segment_boxes)


def planted_blocks(sizes, within=1.0, between=0.0, noise=0.0, seed=0):
    """A block-diagonal affinity over sum(sizes) nodes in shuffled order -> (affinity [1, n, n], block of each node)."""
    g = torch.Generator().manual_seed(seed)
    block = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    block = block[torch.randperm(len(block), generator=g)]
    w = torch.where(block[:, None] == block[None], within, between)
    w = w + noise * torch.rand(len(block), len(block), generator=g)
    return ((w + w.T) / 2)[None], block


@pytest.mark.parametrize("between", [0.0, 0.05])
@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectral_clustering_splits_two_planted_blocks_exactly(between, normalised, seed):
    affinity, block = planted_blocks((30, 18), between=between, noise=0.1, seed=seed)
    _, vectors = laplacian_eigenvectors(affinity, 2, normalised)
    segments = spectral_segments(vectors, 2, seed=seed)[0]
    assert segments.unique().numel() == 2
    assert all(segments[block == b].unique().numel() == 1 for b in (0, 1))  # each block one segment, both differ


def test_generalised_eigenvectors_solve_l_v_equals_mu_d_v_and_are_d_orthonormal():
    affinity, _ = planted_blocks((10, 12), between=0.2, noise=0.3)
    values, vectors = laplacian_eigenvectors(affinity.double(), 5)
    w = affinity[0].double()
    d = torch.diag(w.sum(1))
    v = vectors[0].double()
    assert torch.allclose((d - w) @ v, d @ v * values[0], atol=1e-4)
    assert torch.allclose(v.T @ d @ v, torch.eye(5, dtype=torch.double), atol=1e-4)
    assert values[0, 0].abs() < 1e-5 and (values[0].diff() >= -1e-6).all()


def test_eigengap_counts_three_planted_blocks():
    affinity, _ = planted_blocks((15, 20, 12), between=0.02, noise=0.05)
    values, _ = laplacian_eigenvectors(affinity, 8)
    assert eigengap_count(values).tolist() == [3]


def test_knn_colour_affinity_is_symmetric_counts_of_neighbours():
    image = torch.zeros(2, 4, 6, 3)
    image[:, :, 3:] = 1.0  # two colours, left and right halves
    w = knn_colour_affinity(image, neighbours=(5, 3), distance_weights=(2.0, 0.1))
    n = 24
    assert w.shape == (2, n, n) and torch.equal(w, w.transpose(1, 2))
    assert w.sum().item() == 2 * 2 * (5 + 3) * n  # each pixel's k neighbours, counted both ways, two images
    assert torch.equal(w[0].diagonal(), torch.full((n,), 4.0))  # itself, in both settings, both ways
    left = (torch.arange(n) % 6) < 3
    assert w[0][left][:, ~left].sum() == 0  # the colour gap outweighs any position


def test_border_segment_is_the_segment_around_the_object():
    segments = torch.zeros(1, 6, 8, dtype=torch.long)
    segments[0, 2:4, 3:6] = 1
    segments[0, :, 0] = 2  # a thin strip along one edge
    assert border_segment(segments, 3).tolist() == [0]


def test_segment_boxes_erode_then_dilate_and_never_empty_a_segment():
    segments = torch.zeros(1, 10, 10, dtype=torch.long)
    segments[0, 4:7, 2:8] = 1  # a 3x6 bar
    segments[0, 0, 9] = 2  # a single patch: erosion would empty it
    boxes, present = segment_boxes(segments, 4, erode=1, dilate=2)
    assert present.tolist() == [[True, True, True, False]]
    assert boxes[0, 1].tolist() == [3, 1, 8, 9]  # eroded to row 5, cols 3..6, then grown by 2 in each direction
    assert boxes[0, 2].tolist() == [0, 7, 3, 10]  # kept, then grown (clipped at the border)
    assert boxes[0, 3].tolist() == [0, 0, 0, 0]
    plain, _ = segment_boxes(segments, 4, erode=0, dilate=0)
    assert torch.equal(plain, concept_boxes(segments, 4)[0])  # no morphology: the concepts' own boxes


def test_mask_boxes_agree_with_the_concept_boxes_of_one_hot_masks():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (3, 7, 9), generator=g)
    masks = torch.nn.functional.one_hot(ids, 6).permute(0, 3, 1, 2).bool()
    boxes, present = mask_boxes(masks)
    expected_boxes, expected_present = concept_boxes(ids, 6)
    assert torch.equal(boxes, expected_boxes) and torch.equal(present, expected_present)
