import torch

from acseg.retrieval import knn_vote, majority_classes, nearest_regions, region_class_counts, retrieval_accuracy


def separable_regions(n_images=40, n_classes=4, per_image=3, dim=16, seed=0):
    """Regions whose embedding is their class's direction plus noise, several classes per image."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.eye(dim)[:n_classes] * 5
    images = torch.arange(n_images).repeat_interleave(per_image)
    classes = torch.randint(n_classes, (len(images),), generator=g)
    embeddings = directions[classes] + torch.randn(len(images), dim, generator=g)
    return embeddings, images, classes


def test_top1_is_perfect_on_class_separable_regions_and_chance_when_shuffled():
    embeddings, images, classes = separable_regions()
    scores = retrieval_accuracy(embeddings, images, classes, (1, 5))
    assert scores == {1: 100.0, 5: 100.0}
    chance = (torch.bincount(classes).float() / len(classes)).pow(2).sum().item() * 100  # 1-NN of random pairs
    shuffled = []
    for seed in range(5):
        perm = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed))
        shuffled.append(retrieval_accuracy(embeddings[perm], images, classes, (1,))[1])
    assert abs(sum(shuffled) / len(shuffled) - chance) < 6  # ~25 % for 4 classes


def test_neighbours_come_from_other_images_only_nearest_first():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.9, 0.1], [0.0, 1.0]])
    images = torch.tensor([0, 0, 1, 2])
    neighbours = nearest_regions(embeddings, images, 3)
    assert neighbours[0].tolist() == [2, 3, -1]  # region 1 shares its image; only two regions elsewhere
    assert neighbours[3].tolist() == [2, 1, 0]


def test_vote_counts_first_and_ties_go_to_the_nearer_neighbour():
    classes = torch.tensor([0, 1, 1, 2, 0])
    neighbours = torch.tensor([[0, 1, 2, -1], [1, 0, 3, 4], [3, -1, -1, -1], [-1, -1, -1, -1]])
    assert knn_vote(classes, neighbours, 3).tolist() == [1, 0, 2, -1]


def test_region_classes_are_the_majority_of_their_labelled_pixels():
    concepts = torch.tensor([[[0, 0, 1], [0, 2, 1]]])
    labels = torch.tensor([[[3, 3, 1], [9, 9, 9]]])  # 9 = void
    counts = region_class_counts(concepts, labels, 4, 4, ignore_index=9)
    assert counts.shape == (1, 4, 4) and counts.sum() == 3
    assert majority_classes(counts).tolist() == [[3, 1, -1, -1]]
    assert retrieval_accuracy(torch.randn(3, 2), torch.arange(3), torch.tensor([-1, -1, -1]))[1] != 0  # NaN
