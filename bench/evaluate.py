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
from typing import Callable, Hashable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from acseg.assignment import channel_argmax
from acseg.crf import CRFParams, DenseCRF
from acseg.metrics import ConfusionAccumulator, SegmentationScores, hungarian_miou
from bench.data import DatasetSpec
from bench.features import CachedFeatures


@dataclass
class Prediction:
    scores: torch.Tensor  # [B, S, H, W] per-pixel segment scores at the label resolution (higher = closer)
    segment_clusters: torch.Tensor | None = None  # [B, S] cluster of each segment, -1 = unused; None: identity
    segments_used: torch.Tensor | None = None  # [B] segments each image uses (None: those that win a pixel)

    def segment_counts(self) -> torch.Tensor:
        """[B] segments each image uses: the method's own count (ACSeg: concepts that win a patch), else the
        segments that win at least one pixel."""
        if self.segments_used is not None:
            return self.segments_used.cpu()
        won = channel_argmax(self._masked_scores()).flatten(1).cpu()
        return torch.tensor([int(row.unique().numel()) for row in won])

    def _unused(self) -> torch.Tensor:
        """[B, S, 1, 1]: the segments without a cluster (they can never win a pixel)."""
        return (self.segment_clusters < 0)[:, :, None, None]

    def _masked_scores(self) -> torch.Tensor:
        if self.segment_clusters is None:
            return self.scores
        return self.scores.masked_fill(self._unused(), float("-inf"))

    def crf_unary(self, alpha: float) -> np.ndarray:
        """The CRF's input: softmax(alpha * scores) [B, S, H, W] (segments without a cluster get 0)."""
        return torch.softmax(alpha * self._masked_scores().float(), dim=1).cpu().numpy()

    def clusters(self, refined: Iterable[np.ndarray] | None = None) -> torch.Tensor:
        """Cluster id per pixel [B, H, W]: argmax of the scores, or of the CRF's ``refined`` probabilities of each
        image."""
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


def _refine(image: np.ndarray, unaries: list[np.ndarray], params: CRFParams) -> list[np.ndarray]:
    """Every prediction of one image through its dense CRF, the kernels built once (module level, so worker
    processes can run it)."""
    crf = DenseCRF(image, params)
    return [crf.refine(u).numpy() for u in unaries]


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
    segments_per_image: dict[str, int]  # image name -> segments used


def evaluate(predict: Predict, feats: CachedFeatures, spec: DatasetSpec, read_label: Callable[[str], np.ndarray],
             n_clusters: int, device: torch.device, **kwargs) -> Evaluation:
    """One predictor over the split (see :func:`evaluate_all`); ``on_batch(names, clusters, labels)``."""
    on_batch = kwargs.pop("on_batch", None)
    each = (lambda key, *rest: on_batch(*rest)) if on_batch is not None else None
    return evaluate_all({None: predict}, feats, spec, read_label, {None: n_clusters}, device, on_batch=each,
                        **kwargs)[None]


def evaluate_all(
    predicts: dict[Hashable, Predict],
    feats: CachedFeatures,
    spec: DatasetSpec,
    read_label: Callable[[str], np.ndarray],
    n_clusters: dict[Hashable, int],
    device: torch.device,
    batch_size: int = 8,
    progress: bool = True,
    on_batch: Callable[[Hashable, list[str], torch.Tensor, torch.Tensor], None] | None = None,
    crf: CRFParams | None = None,
    read_image: Callable[[str], np.ndarray] | None = None,
    crf_alpha: float = 1.0,
    crf_workers: int = 1,
) -> dict[Hashable, Evaluation]:
    """Every image of ``feats`` predicted by every predictor at its label's resolution, one confusion matrix per
    predictor; features and labels are read once for all of them. ``crf`` (with ``read_image``: name -> RGB uint8):
    dense-CRF post-processing, unary = softmax(crf_alpha * scores), on each image at its label's resolution, in
    ``crf_workers`` processes; an image's kernels are built once for all predictors."""
    if crf is not None and read_image is None:
        raise ValueError("a CRF needs the images: pass read_image")
    keys = list(predicts)
    acc = {k: ConfusionAccumulator(n_clusters[k], spec.n_classes, spec.ignore_index) for k in keys}
    segments: dict[Hashable, dict[str, int]] = {k: {} for k in keys}
    n = len(feats)
    desc = "evaluate + CRF" if crf is not None else "evaluate"
    previous = None  # (names, label, predictions, refined) of the batch whose CRF runs while the next is predicted

    def finish(names, label, predictions, refined):
        per_image = list(refined) if refined is not None else None  # [image][key] refined probabilities
        for i, key in enumerate(keys):
            clusters = predictions[key].clusters([r[i] for r in per_image] if per_image is not None else None)
            acc[key].update(clusters, label)
            if on_batch is not None:
                on_batch(key, names, clusters.cpu(), label)

    with torch.no_grad(), crf_pool(crf_workers if crf is not None else 1) as map_fn:
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, unit="batch"):
            stop = min(start + batch_size, n)
            labels = [torch.from_numpy(read_label(name)) for name in feats.names[start:stop]]
            # images with one label size and one patch grid are predicted together
            for first, last in _runs([(tuple(lab.shape), feats.grid(start + i)) for i, lab in enumerate(labels)]):
                images = feats.take(range(start + first, start + last))
                label = torch.stack(labels[first:last])
                size = tuple(label.shape[1:])
                features, attention = images.features.to(device), images.cls_attention.to(device)
                predictions = {key: predicts[key](features, size, attention, images.names) for key in keys}
                for key, prediction in predictions.items():
                    segments[key].update(zip(images.names, prediction.segment_counts().tolist()))
                if crf is None:
                    finish(images.names, label, predictions, None)
                    continue
                rgb = [_image_at(read_image(name), size) for name in images.names]
                unaries = [predictions[key].crf_unary(crf_alpha) for key in keys]  # [key][image]
                # submitted at once (a pool's map returns straight away): the next batch is predicted meanwhile
                refined = map_fn(_refine, rgb, [[u[i] for u in unaries] for i in range(len(rgb))],
                                 [crf] * len(rgb))
                if previous is not None:  # batches finish in order: the same confusion, the same first images
                    finish(*previous)
                previous = (images.names, label, predictions, refined)
        if previous is not None:
            finish(*previous)
    out = {}
    for key in keys:
        matrix = acc[key].matrix.numpy()
        out[key] = Evaluation(hungarian_miou(matrix), matrix, n, segments[key])
    return out


def _runs(keys: list) -> list[tuple[int, int]]:
    """[first, last) index ranges of consecutive equal keys (a dataset with one image size and one grid, like
    CamVid, gives one run per batch)."""
    runs, first = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[first]:
            runs.append((first, i))
            first = i
    return runs


def _image_at(image: np.ndarray, size) -> np.ndarray:
    """The RGB image at the label resolution (the CRF's appearance kernel compares colours pixel by pixel)."""
    if image.shape[:2] != tuple(size):
        from PIL import Image

        image = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return image
