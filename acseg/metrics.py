"""Unsupervised segmentation metrics (the protocol of docs/protocol.md).

One confusion matrix over the whole split (clusters x classes, void ignored), accumulated image by image;
clusters matched to classes by the Hungarian algorithm on that one matrix; mIoU over classes present,
pixel accuracy, per-class IoU. Over-clustering (more clusters than classes) uses many-to-one majority matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def confusion_matrix(
    clusters: torch.Tensor, labels: torch.Tensor, n_clusters: int, n_classes: int, ignore_index: int
) -> torch.Tensor:
    """Counts [n_clusters, n_classes] of (predicted cluster, true class) over all non-void pixels."""
    valid = labels != ignore_index
    if ((labels[valid] < 0) | (labels[valid] >= n_classes)).any():
        raise ValueError(f"labels outside 0..{n_classes - 1} (and not the void id {ignore_index})")
    idx = clusters[valid].long() * n_classes + labels[valid].long()
    return torch.bincount(idx, minlength=n_clusters * n_classes).reshape(n_clusters, n_classes)


class ConfusionAccumulator:
    """Streams predictions into one dataset-level confusion matrix: memory independent of the split size."""

    def __init__(self, n_clusters: int, n_classes: int, ignore_index: int):
        self.n_clusters, self.n_classes, self.ignore_index = n_clusters, n_classes, ignore_index
        self.matrix = torch.zeros(n_clusters, n_classes, dtype=torch.long)

    def update(self, clusters: torch.Tensor, labels: torch.Tensor) -> None:
        self.matrix += confusion_matrix(
            clusters.cpu(), labels.cpu(), self.n_clusters, self.n_classes, self.ignore_index
        )


def hungarian_match(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cluster -> class mapping maximising matched pixels, one-to-one. Unmatched clusters map to -1."""
    m = np.asarray(matrix)
    rows, cols = linear_sum_assignment(m, maximize=True)
    mapping = np.full(m.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def majority_match(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Many-to-one mapping for over-clustering: every cluster takes its majority class."""
    return np.asarray(matrix).argmax(axis=1)


@dataclass
class SegmentationScores:
    miou: float  # percent, mean over classes present in the labels
    accuracy: float  # percent of non-void pixels
    per_class_iou: list[float]  # percent, NaN for classes absent from the labels
    mapping: list[int]  # cluster -> class


def scores_from_confusion(matrix: np.ndarray | torch.Tensor, mapping: np.ndarray) -> SegmentationScores:
    """mIoU / accuracy / per-class IoU after mapping clusters to classes."""
    m = np.asarray(matrix, dtype=np.float64)
    n_classes = m.shape[1]
    matched = np.zeros((n_classes, n_classes))
    for cluster, cls in enumerate(mapping):
        if cls >= 0:
            matched[cls] += m[cluster]
    # rows: predicted class, cols: true class; unmatched clusters count as wrong everywhere
    tp = np.diag(matched)
    predicted = matched.sum(axis=1)
    true = m.sum(axis=0)
    union = predicted + true - tp
    present = true > 0
    iou = np.full(n_classes, np.nan)
    iou[present] = tp[present] / union[present]
    total = m.sum()
    return SegmentationScores(
        miou=float(np.nanmean(iou) * 100) if present.any() else float("nan"),
        accuracy=float(tp.sum() / total * 100) if total else float("nan"),
        per_class_iou=[float(v * 100) for v in iou],
        mapping=[int(v) for v in mapping],
    )


def hungarian_miou(matrix: np.ndarray | torch.Tensor) -> SegmentationScores:
    """The main-table metric: Hungarian matching on the dataset-level confusion matrix."""
    return scores_from_confusion(matrix, hungarian_match(matrix))


def overclustering_miou(matrix: np.ndarray | torch.Tensor) -> SegmentationScores:
    """The over-clustering column: majority (many-to-one) matching."""
    return scores_from_confusion(matrix, majority_match(matrix))


def matched_disagreement(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """The share of items whose label differs between two labellings [N] (ids in [0, k), -1 ignored) once their
    ids are matched one-to-one by the Hungarian method on their confusion matrix: 0 for the same partition under
    any names. Used to compare two clusterings, never with ground truth."""
    counts = confusion_matrix(a, b, k, k, ignore_index=-1).numpy()
    mapping = hungarian_match(counts)
    matched = sum(counts[i, j] for i, j in enumerate(mapping) if j >= 0)
    return 1.0 - matched / len(a)
