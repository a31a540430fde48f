"""Streaming evaluation: predictions image batch by image batch into one dataset-level confusion matrix.

Memory does not grow with the split: only the current batch's predictions (and, with a CRF, the previous batch's,
whose CRF runs in worker processes meanwhile) and the K x C matrix are held.
Every method (ACSeg, k-means, STEGO) is evaluated by this one function through a ``predict`` callable:
cached features [B, h, w, d], the label size, the cached [CLS] attention
[B, heads, h, w] (ACSeg's background split) and the images' names (ACSeg's re-encoded crops read the images)
-> a :class:`Prediction` (per-pixel segment scores at the
label resolution). Without a CRF the argmax picks each pixel's segment; with one, the softmax of the scores is
the CRF's unary and the argmax is taken after it. A segment is a cluster (k-means, STEGO) or a concept that
carries its cluster (ACSeg).
Labels come decoded from ``read_label(name)``, images (for the CRF) from ``read_image(name)``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from acseg.assignment import channel_argmax
from acseg.crf import CRFParams, dense_crf
from acseg.metrics import ConfusionAccumulator, SegmentationScores, hungarian_miou
from bench.data import DatasetSpec
from bench.features import CachedFeatures


@dataclass
class Prediction:
    scores: torch.Tensor  # [B, S, H, W] per-pixel segment scores at the label resolution (higher = closer)
    segment_clusters: torch.Tensor | None = None  # [B, S] cluster of each segment, -1 = unused; None: identity

    def _unused(self) -> torch.Tensor:
        """[B, S, 1, 1]: the segments without a cluster (they can never win a pixel)."""
        return (self.segment_clusters < 0)[:, :, None, None]

    def _masked_scores(self) -> torch.Tensor:
        if self.segment_clusters is None:
            return self.scores
        return self.scores.masked_fill(self._unused(), float("-inf"))

    def refine(self, crf: CRFParams, images: list[np.ndarray], alpha: float = 1.0,
               map_fn: Callable = map) -> Iterable[np.ndarray]:
        """The dense CRF's refined probabilities [S, H, W] of each image of the batch, unary = softmax(alpha *
        scores), in order. With a process pool's ``map_fn`` every image is submitted at once and this returns
        straight away, so the caller can predict the next batch while the workers run the CRF."""
        probs = torch.softmax(alpha * self._masked_scores().float(), dim=1).cpu()
        return map_fn(_refine, images, probs.numpy(), [crf] * len(images))

    def clusters(self, refined: Iterable[np.ndarray] | None = None) -> torch.Tensor:
        """Cluster id per pixel [B, H, W]: argmax of the scores, or of the CRF's ``refined`` probabilities
        (from :meth:`refine`)."""
        if refined is None:
            segments = channel_argmax(self._masked_scores())
        else:
            probs = torch.stack([torch.from_numpy(q) for q in refined])
            if self.segment_clusters is not None:
                probs = probs.masked_fill(self._unused().cpu(), -1.0)
            segments = channel_argmax(probs).to(self.scores.device)
        if self.segment_clusters is None:
            return segments
        return torch.gather(self.segment_clusters, 1, segments.flatten(1)).reshape(segments.shape)


def _refine(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """One image through the dense CRF (module level, so worker processes can run it)."""
    return dense_crf(image, torch.from_numpy(probs), params).numpy()


@contextlib.contextmanager
def crf_pool(workers: int) -> Iterator[Callable]:
    """A map over images for the CRF: in ``workers`` processes (0: one per CPU core), or in this one.

    pydensecrf holds the GIL, so threads would not help. Workers start from a clean forkserver (no forked
    torch threads), get one image at a time and are shut down when the evaluation ends, even on an error."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        yield map
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield pool.map


Predict = Callable[[torch.Tensor, tuple[int, int], torch.Tensor, list[str]], Prediction]


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
    crf: CRFParams | None = None,
    read_image: Callable[[str], np.ndarray] | None = None,
    crf_alpha: float = 1.0,
    crf_workers: int = 1,
) -> Evaluation:
    """``crf`` (with ``read_image``: name -> RGB uint8): dense-CRF post-processing, unary =
    softmax(crf_alpha * scores), on each image at its label's resolution, in ``crf_workers`` processes."""
    if crf is not None and read_image is None:
        raise ValueError("a CRF needs the images: pass read_image")
    acc = ConfusionAccumulator(n_clusters, spec.n_classes, spec.ignore_index)
    n = len(feats.names)
    desc = "evaluate + CRF" if crf is not None else "evaluate"
    previous = None  # (names, prediction, refined, label) of the batch whose CRF runs while the next is predicted

    def finish(names, prediction, refined, label):
        clusters = prediction.clusters(refined)
        acc.update(clusters, label)
        if on_batch is not None:
            on_batch(names, clusters.cpu(), label)

    with torch.no_grad(), crf_pool(crf_workers if crf is not None else 1) as map_fn:
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, unit="batch"):
            labels = [torch.from_numpy(read_label(name)) for name in feats.names[start : start + batch_size]]
            for first, last in _equal_size_runs(labels):  # images with labels of one size are predicted together
                batch = slice(start + first, start + last)
                names = feats.names[batch]
                label = torch.stack(labels[first:last])
                size = tuple(label.shape[1:])
                prediction = predict(feats.features[batch].to(device), size, feats.cls_attention[batch].to(device),
                                     names)
                if crf is None:
                    finish(names, prediction, None, label)
                    continue
                images = [_image_at(read_image(name), size) for name in names]
                refined = prediction.refine(crf, images, crf_alpha, map_fn)
                if previous is not None:  # batches finish in order: the same confusion, the same first images
                    finish(*previous)
                previous = (names, prediction, refined, label)
        if previous is not None:
            finish(*previous)
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


def _image_at(image: np.ndarray, size) -> np.ndarray:
    """The RGB image at the label resolution (the CRF's appearance kernel compares colours pixel by pixel)."""
    if image.shape[:2] != tuple(size):
        from PIL import Image

        image = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return image
