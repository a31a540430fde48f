"""Streaming evaluation: predictions image batch by image batch into one dataset-level confusion matrix.

Memory does not grow with the split: only the current batch's predictions and the K x C matrix are held.
Every method (ACSeg, k-means, later STEGO) is evaluated by this one function through a ``predict`` callable:
cached features [B, h, w, d] and the label size -> cluster id per pixel [B, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from acseg.metrics import ConfusionAccumulator, SegmentationScores, hungarian_miou
from bench.data import DatasetSpec, load_label
from bench.features import CachedFeatures

Predict = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


@dataclass
class Evaluation:
    scores: SegmentationScores
    confusion: np.ndarray  # [K, C]
    n_images: int


def evaluate(
    predict: Predict,
    feats: CachedFeatures,
    spec: DatasetSpec,
    label_dir,
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
            names = feats.names[start : start + batch_size]
            labels = torch.stack([torch.from_numpy(load_label(label_dir / name)) for name in names])
            clusters = predict(feats.features[start : start + batch_size].to(device), tuple(labels.shape[1:]))
            acc.update(clusters, labels)
            if on_batch is not None:
                on_batch(names, clusters.cpu(), labels)
    matrix = acc.matrix.numpy()
    return Evaluation(hungarian_miou(matrix), matrix, n)
