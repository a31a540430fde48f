"""Streaming evaluation: predictions image batch by image batch into one dataset-level confusion matrix.

Memory does not grow with the split: only the current batch's predictions and the K x C matrix are held.
Every method (ACSeg, k-means, later STEGO) is evaluated by this one function through a ``predict`` callable:
cached features [B, h, w, d], the label size and the cached [CLS] attention [B, heads, h, w] (used by ACSeg's
background split) -> cluster id per pixel [B, H, W]. Labels come decoded from ``read_label(name)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from acseg.metrics import ConfusionAccumulator, SegmentationScores, hungarian_miou
from bench.data import DatasetSpec
from bench.features import CachedFeatures

Predict = Callable[[torch.Tensor, tuple[int, int], torch.Tensor], torch.Tensor]


@dataclass
class Evaluation:
    scores: SegmentationScores
    confusion: np.ndarray  # [K, C]
    n_images: int


def evaluate(
    predict: Predict,
    feats: CachedFeatures,
    spec: DatasetSpec,
    read_label: Callable[[str], np.ndarray],
    n_clusters: int,
    device: torch.device,
    batch_size: int = 8,
    progress: bool = True,
    on_batch: Callable[[list[str], torch.Tensor, torch.Tensor], None] | None = None,
) -> Evaluation:
    acc = ConfusionAccumulator(n_clusters, spec.n_classes, spec.ignore_index)
    n = len(feats.names)
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="evaluate", disable=not progress, unit="batch"):
            labels = [torch.from_numpy(read_label(name)) for name in feats.names[start : start + batch_size]]
            for first, last in _equal_size_runs(labels):  # images with labels of one size are predicted together
                batch = slice(start + first, start + last)
                label = torch.stack(labels[first:last])
                clusters = predict(feats.features[batch].to(device), tuple(label.shape[1:]),
                                   feats.cls_attention[batch].to(device))
                acc.update(clusters, label)
                if on_batch is not None:
                    on_batch(feats.names[batch], clusters.cpu(), label)
    matrix = acc.matrix.numpy()
    return Evaluation(hungarian_miou(matrix), matrix, n)


def _equal_size_runs(labels: list[torch.Tensor]) -> list[tuple[int, int]]:
    """[first, last) index ranges of consecutive labels with the same size (datasets with images of one size,
    like CamVid, give one run per batch)."""
    runs, first = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i].shape != labels[first].shape:
            runs.append((first, i))
            first = i
    return runs
