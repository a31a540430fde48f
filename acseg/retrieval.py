"""Concept retrieval, the paper's k-NN table: do a concept region's nearest regions in other images share its class?

Label-free at inference: every concept region of a split is an embedding (e.g. its mean feature); its neighbours
are the regions of *other* images of highest cosine similarity. Scored with labels: a region's class is the
majority true class of its pixels, and

    top-k = the share of regions whose k nearest neighbours' majority vote is the region's own class

(top-1: the nearest neighbour's class). The vote's ties go to the class of the nearer neighbour. The paper's
top-5 sits 3-4 points above its top-1 for every generator, which fits a 5-NN vote, not "any of the 5 matches"
(that would be far higher) nor the share of matching neighbours (lower): the vote is our reading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def region_class_counts(concepts: torch.Tensor, labels: torch.Tensor, n_concepts: int, n_classes: int,
                        ignore_index: int) -> torch.Tensor:
    """Pixels of each true class inside each concept: concepts, labels [B, H, W] -> counts [B, S, C] (void left out)."""
    b = concepts.shape[0]
    valid = labels != ignore_index
    image = torch.arange(b, device=concepts.device)[:, None, None].expand_as(concepts)
    index = (image * n_concepts + concepts) * n_classes + labels.clamp(0, n_classes - 1)
    counts = torch.bincount(index[valid], minlength=b * n_concepts * n_classes)
    return counts.reshape(b, n_concepts, n_classes)


def majority_classes(counts: torch.Tensor) -> torch.Tensor:
    """The majority class of each region's labelled pixels, counts [..., C] -> [...] (-1: no labelled pixel)."""
    return torch.where(counts.sum(-1) > 0, counts.argmax(-1), -1)


def nearest_regions(embeddings: torch.Tensor, images: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """The k regions of other images most cosine-similar to each region: embeddings [M, d], images [M] (the image
    each region belongs to) -> indices [M, k], nearest first (-1 where fewer than k regions of other images exist)."""
    unit = F.normalize(embeddings.float(), dim=-1)
    k_eff = min(k, unit.shape[0])
    out = []
    for start in range(0, unit.shape[0], chunk):
        part = slice(start, start + chunk)
        similarity = (unit[part] @ unit.T).masked_fill(images[part, None] == images[None], float("-inf"))
        top = similarity.topk(k_eff, dim=-1)
        out.append(top.indices.masked_fill(top.values == float("-inf"), -1))
    neighbours = torch.cat(out)
    return F.pad(neighbours, (0, k - k_eff), value=-1)


def knn_vote(classes: torch.Tensor, neighbours: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The class each region's neighbours [M, k] (nearest first, -1 = none) vote for -> [M] (-1 with no neighbour).

    Each neighbour votes 1 + 2^-(rank + 2): the bonuses sum to less than one vote, and the nearest's exceeds all
    later ones together, so counts decide and ties go to the class of the nearest neighbour among them."""
    k = neighbours.shape[1]
    present = neighbours >= 0
    weight = (1 + 2.0 ** -(torch.arange(k, device=classes.device) + 2.0)) * present
    their = classes[neighbours.clamp_min(0)].clamp_min(0)
    votes = torch.zeros(neighbours.shape[0], n_classes, device=classes.device).scatter_add_(1, their, weight)
    return torch.where(present.any(1), votes.argmax(1), -1)


def retrieval_accuracy(embeddings: torch.Tensor, images: torch.Tensor, classes: torch.Tensor,
                       ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k concept retrieval in percent for each k of ``ks``, over the regions with a class (classes [M], -1 =
    none: left out, as queries and as neighbours); one neighbour search for all k. NaN with no region."""
    keep = classes >= 0
    embeddings, images, classes = embeddings[keep], images[keep], classes[keep]
    if classes.numel() == 0:
        return {k: float("nan") for k in ks}
    neighbours = nearest_regions(embeddings, images, max(ks))
    n_classes = int(classes.max()) + 1
    return {k: float((knn_vote(classes, neighbours[:, :k], n_classes) == classes).float().mean() * 100) for k in ks}
