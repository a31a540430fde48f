"""The concept classifier (docs/methods/acseg.md, step 5): per-image concepts -> dataset-wide classes.

Each concept region is represented either by the mean of its pixel features (the region-mean variant,
:func:`region_embeddings`) or by the backbone's [CLS] token of its bounding box, cropped and re-encoded (the
crop variant: :func:`concept_boxes` and :func:`crop_boxes` here, the backbone pass in the harness); k-means over
the regions of a whole split gives K class centroids; every concept then takes the class of its nearest
centroid and every pixel the class of its concept. Of the k-means restarts the lowest inertia wins.

For datasets with a background class (VOC), the paper splits background off first: per image, the backbone's
last-layer [CLS] attention is summed inside each concept, a 2-means on those scores separates the concepts, and
the low cluster is background (:func:`background_concepts`). The other concepts are classified as above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from acseg.kmeans import KMeansResult, kmeans


def region_embeddings(
    features: torch.Tensor, assignment: torch.Tensor, n_prototypes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of each concept's region.

    features [B, n, d], assignment [B, n] (hard concept ids) -> (embeddings [B, k, d], pixel counts [B, k]).
    Concepts that win no pixel get a zero embedding and count 0.
    """
    one_hot = F.one_hot(assignment, n_prototypes).to(features.dtype)  # [B, n, k]
    counts = one_hot.sum(dim=1)
    sums = one_hot.transpose(1, 2) @ features
    return sums / counts.clamp_min(1).unsqueeze(-1), counts


def concept_boxes(assignment: torch.Tensor, n_prototypes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding box of each concept's patches, in patch units.

    assignment [B, h, w] (hard concept ids) -> (boxes [B, k, 4] long as (top, left, bottom, right) with exclusive
    bottom/right, present [B, k]). A concept that wins no patch gets the box (0, 0, 0, 0) and present False.
    """
    b, h, w = assignment.shape
    member = F.one_hot(assignment, n_prototypes).bool()  # [B, h, w, k]
    rows, cols = member.any(2), member.any(1)  # [B, h, k], [B, w, k]: rows / columns the concept touches
    present = rows.any(1)

    def first(hit: torch.Tensor) -> torch.Tensor:  # index of the first True along dim 1 (0 when none)
        return hit.int().max(1).indices

    top, left = first(rows), first(cols)
    bottom, right = h - first(rows.flip(1)), w - first(cols.flip(1))
    boxes = torch.stack([top, left, bottom, right], -1) * present[..., None]
    return boxes, present


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, patch: int, size: int) -> torch.Tensor:
    """Each box of each image, cropped and resized (bilinear) to ``size`` x ``size``, as the ViT re-encodes it.

    images [B, 3, H, W] (H, W = the patch grid x ``patch`` pixels), boxes [B, M, 4] in patch units (from
    :func:`concept_boxes`) -> crops [B, M, 3, size, size], the same as cutting each box out and resizing it with
    ``F.interpolate(mode="bilinear")`` (samples clamp at the box's edge, never reach outside it). A box's
    aspect ratio is not kept: the crop is stretched to the square input, the usual way a region is fed to a
    classifier. One batched ``grid_sample``, no Python loop over boxes.
    """
    b, c, height, width = images.shape
    m = boxes.shape[1]
    top, left, bottom, right = (boxes.to(images.dtype) * patch).unbind(-1)  # pixel edges, [B, M]
    steps = (torch.arange(size, dtype=images.dtype, device=images.device) + 0.5) / size  # output pixel centres

    def source(start, end, extent):  # output centres -> source pixel centres inside [start, end), normalised
        u = start[..., None] + steps * (end - start)[..., None] - 0.5
        u = torch.minimum(u, (end - 1)[..., None]).maximum(start[..., None])
        return (u + 0.5) / extent * 2 - 1  # grid_sample's coordinates (align_corners=False)

    ys, xs = source(top, bottom, height), source(left, right, width)  # [B, M, size]
    grid = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), -1)  # [B, M, size, size, 2]
    sources = images.unsqueeze(1).expand(b, m, c, height, width).reshape(b * m, c, height, width)
    crops = F.grid_sample(sources, grid.reshape(b * m, size, size, 2), mode="bilinear", padding_mode="border",
                          align_corners=False)
    return crops.reshape(b, m, c, size, size)


def fit_concept_classifier(
    embeddings: torch.Tensor,
    n_classes: int,
    seed: int = 0,
    cosine: bool = True,
    iters: int = 100,
    n_init: int = 1,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> KMeansResult:
    """k-means over the region embeddings [M, d] of a split (only regions that exist) into K classes.

    ``weights`` (e.g. region sizes) make large regions count more than slivers.
    """
    return kmeans(embeddings, n_classes, seed=seed, iters=iters, cosine=cosine, n_init=n_init, weights=weights,
                  dtype=dtype)


def classify_concepts(embeddings: torch.Tensor, centroids: torch.Tensor, cosine: bool = True) -> torch.Tensor:
    """Class id of each concept embedding [..., d] -> [...] (nearest class centroid)."""
    flat = embeddings.reshape(-1, embeddings.shape[-1]).float()
    if cosine:
        scores = F.normalize(flat, dim=-1) @ centroids.T
    else:
        scores = -torch.cdist(flat, centroids)
    return scores.argmax(-1).reshape(embeddings.shape[:-1])


def concept_attention(cls_attention: torch.Tensor, assignment: torch.Tensor, n_prototypes: int) -> torch.Tensor:
    """Sum of the last-layer [CLS] attention inside each concept's region, averaged over heads.

    cls_attention [B, heads, h, w] (or [B, heads, n]), assignment [B, n] (hard concept ids) -> [B, k]. A concept
    that wins no patch scores 0. Each head's attention sums to 1 over the patches, so the scores of an image's
    concepts sum to 1: the share of the [CLS] token's attention that each concept receives.
    """
    attention = cls_attention.float().flatten(2).mean(1)  # [B, n]
    one_hot = F.one_hot(assignment, n_prototypes).to(attention.dtype)  # [B, n, k]
    return (attention.unsqueeze(-1) * one_hot).sum(1)


def two_means_low(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row, the exact 2-means of the valid scores (1-D: the best split of the sorted values, by the sum of
    squared distances to the two cluster means); True for the valid entries of the low cluster.

    scores, valid [B, k] -> bool [B, k]. Rows with fewer than two valid scores, or with all valid scores equal,
    have no low cluster (all False).
    """
    b, k = scores.shape
    x = scores.float().masked_fill(~valid, float("inf"))
    order = x.argsort(-1)
    sorted_x = torch.gather(x, 1, order).masked_fill(~torch.gather(valid, 1, order), 0.0)
    m = valid.sum(-1)  # [B] valid scores per row, the first m of sorted_x
    s1, s2 = sorted_x.cumsum(-1), (sorted_x * sorted_x).cumsum(-1)
    j = torch.arange(1, k + 1, device=scores.device).expand(b, k).float()  # size of the low cluster
    total1, total2 = torch.gather(s1, 1, (m - 1).clamp_min(0)[:, None]), torch.gather(s2, 1, (m - 1).clamp_min(0)[:, None])
    rest = (m[:, None] - j).clamp_min(1)
    sse = (s2 - s1 * s1 / j) + ((total2 - s2) - (total1 - s1) ** 2 / rest)
    sse = sse.masked_fill(j >= m[:, None], float("inf"))  # both clusters non-empty
    split = sse.argmin(-1)  # the low cluster is sorted positions 0..split
    spread = torch.where(valid, scores.float(), -float("inf")).amax(-1) - x.amin(-1)
    has_split = (m >= 2) & (spread > 0)
    low_sorted = torch.arange(k, device=scores.device)[None] <= split[:, None]
    low = torch.zeros_like(valid).scatter(1, order, low_sorted)
    return low & valid & has_split[:, None]


def background_concepts(cls_attention: torch.Tensor, assignment: torch.Tensor, n_prototypes: int) -> torch.Tensor:
    """ACSeg's background split: per image, the concepts whose summed [CLS] attention falls in the low cluster of
    a 2-means over the image's concepts. -> bool [B, k] (concepts that win no patch are never background)."""
    scores = concept_attention(cls_attention, assignment, n_prototypes)
    present = F.one_hot(assignment, n_prototypes).sum(1) > 0
    return two_means_low(scores, present)
