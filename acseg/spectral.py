"""Spectral segmentation of an image's patches, as Deep Spectral Methods does (Melas-Kyriazi et al., CVPR 2022;
its public code, lukemelas/deep-spectral-segmentation, ``extract/extract.py``):

    W_feat = max(0, cos(x_i, x_j))                feature affinity (:func:`acseg.losses.affinity`)
    W      = W_feat + lambda * W_colour            optionally the image's KNN-matting colour affinity
    D      = diag(sum_j W_ij),  L = D - W          degrees and the graph Laplacian
    L v = mu D v                                   the normalised Laplacian's eigenvectors (v = D^-1/2 u, where
                                                   u are the eigenvectors of L_sym = I - D^-1/2 W D^-1/2)
    segments = k-means on the rows of [v_0 .. v_{K-1}]

Batched over images of one patch grid; no I/O. Where this differs from the public code, on purpose:

- eigenvectors: a dense batched ``torch.linalg.eigh`` of L_sym (every pair, then the first K kept) instead of
  ``scipy.sparse.linalg.eigsh(L, K, sigma=0, M=D)`` (shift-invert, K pairs): the same generalised eigenvectors,
  D-orthonormal, up to sign and rotation within repeated eigenvalues;
- the first eigenvector is kept for the k-means: DSM drops v_0, which is constant on a connected graph (the same
  coordinate for every patch, so k-means is unchanged by keeping it); on a graph in several components the
  0-eigenspace has one indicator per component and eigh may return any basis of it, so dropping v_0 could drop
  a split that keeping it preserves;
- no sign flip of the eigenvectors (DSM flips those that are mostly positive): k-means does not see signs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DEGREE_FLOOR = 1e-12  # a node of no weight gets degree 1, as DSM's (pymatting's) get_diagonal does


def knn_colour_affinity(image: torch.Tensor, neighbours: Sequence[int] = (20, 10),
                        distance_weights: Sequence[float] = (2.0, 0.1)) -> torch.Tensor:
    """The KNN-matting affinity of an image at its patch grid (DSM's ``knn_affinity``, Chen et al. 2013).

    image [B, h, w, 3] in [0, 1] -> W [B, n, n]. For each (k, weight): every pixel's k nearest pixels (itself
    included) in (r, g, b, weight * x, weight * y) with x, y in [0, 1]; W counts, over both settings, how often
    i is among j's neighbours plus how often j is among i's (a symmetric sum, as DSM's sparse matrix sums its
    duplicate entries).
    """
    b, h, w, _ = image.shape
    n = h * w
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, device=image.device),
                            torch.linspace(0, 1, w, device=image.device), indexing="ij")
    colour = image.reshape(b, n, 3).float()
    position = torch.stack([xs, ys], -1).reshape(1, n, 2).expand(b, n, 2)
    out = torch.zeros(b, n, n, device=image.device)
    for k, weight in zip(neighbours, distance_weights):
        points = torch.cat([colour, weight * position], -1)
        nearest = torch.cdist(points, points).topk(min(k, n), dim=-1, largest=False).indices  # [B, n, k]
        ones = torch.ones_like(nearest, dtype=out.dtype)
        counted = torch.zeros(b, n, n, device=image.device).scatter_add_(2, nearest, ones)
        out += counted + counted.transpose(1, 2)
    return out


def laplacian_eigenvectors(affinity: torch.Tensor, k: int,
                           normalised: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k eigenpairs of smallest eigenvalue of the graph Laplacian of ``affinity`` [B, n, n] (symmetric, >= 0).

    ``normalised``: the generalised problem L v = mu D v (DSM's ``lapnorm=True``), solved as L_sym's eigenvectors
    scaled by D^-1/2; else L v = mu v. -> (eigenvalues [B, k] ascending, eigenvectors [B, n, k]).
    """
    affinity = affinity.float()
    degree = affinity.sum(-1)
    degree = torch.where(degree < DEGREE_FLOOR, torch.ones_like(degree), degree)
    if normalised:
        scale = degree.rsqrt()
        eye = torch.eye(affinity.shape[-1], device=affinity.device)
        values, vectors = torch.linalg.eigh(eye - scale[:, :, None] * affinity * scale[:, None, :])
        return values[:, :k], vectors[:, :, :k] * scale[:, :, None]
    values, vectors = torch.linalg.eigh(torch.diag_embed(degree) - affinity)
    return values[:, :k], vectors[:, :, :k]


def eigengap_count(eigenvalues: torch.Tensor) -> torch.Tensor:
    """DSM's adaptive number of segments: after the largest gap between consecutive eigenvalues, the first gap
    (mu_1 - mu_0) excluded. eigenvalues [B, K] ascending, K >= 3 -> [B] long in [2, K - 1]."""
    if eigenvalues.shape[-1] < 3:
        raise ValueError("the eigengap needs at least 3 eigenvalues")
    return eigenvalues.diff(dim=-1)[:, 1:].argmax(-1) + 2


def border_segment(segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """DSM's background guess: per image, the segment holding the most border patches (corners count twice, as
    DSM counts each of the four borders). segments [B, h, w] -> [B] (the first on ties)."""
    border = torch.cat([segments[:, 0], segments[:, -1], segments[:, :, 0], segments[:, :, -1]], 1)
    return F.one_hot(border, n_segments).sum(1).max(-1).indices


_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])


def _morphology(masks: torch.Tensor, steps: int, erode: bool) -> torch.Tensor:
    """Binary erosion (the image border counts as inside, as skimage's binary_erosion) or dilation by the
    4-connected cross, ``steps`` times; a step that would empty a mask is not taken (DSM's erode_or_dilate_mask).
    masks [M, h, w] bool."""
    x = masks.float()[:, None]
    kernel = _CROSS.to(x)[None, None]
    for _ in range(steps):
        padded = F.pad(x, (1, 1, 1, 1), value=1.0 if erode else 0.0)
        hits = F.conv2d(padded, kernel)
        new = (hits > kernel.sum() - 0.5) if erode else (hits > 0.5)
        x = torch.where(new.flatten(1).any(1)[:, None, None, None], new.float(), x)
    return x[:, 0] > 0.5


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding box of each mask [..., h, w] -> (boxes [..., 4] long as (top, left, bottom, right), bottom/right
    exclusive, present [...]); (0, 0, 0, 0) and False for an empty mask. The box convention of
    :func:`acseg.classifier.concept_boxes`, so :func:`acseg.classifier.crop_boxes` crops them."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    present = rows.any(-1)

    def first(hit):
        return hit.int().max(-1).indices

    boxes = torch.stack([first(rows), first(cols), h - first(rows.flip(-1)), w - first(cols.flip(-1))], -1)
    return boxes * present[..., None], present


def segment_boxes(segments: torch.Tensor, n_segments: int, erode: int,
                  dilate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DSM's box of each segment: its mask eroded ``erode`` times, then dilated ``dilate`` times (a cross each
    time, never emptied), then boxed. segments [B, h, w] -> (boxes [B, S, 4], present [B, S])."""
    b, h, w = segments.shape
    masks = F.one_hot(segments, n_segments).permute(0, 3, 1, 2).reshape(b * n_segments, h, w).bool()
    present = masks.flatten(1).any(1)
    masks = _morphology(_morphology(masks, erode, erode=True), dilate, erode=False) & present[:, None, None]
    boxes, present = mask_boxes(masks)
    return boxes.reshape(b, n_segments, 4), present.reshape(b, n_segments)
