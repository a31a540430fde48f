"""Diagnostics of a trained ACSeg model: where it falls short, in numbers.

For every evaluation image, ACSeg's learned partition is set beside per-image k-means into the same number of
segments on the same (centred) features:

- modularity Q of the hard partitions on the image's affinity graph (what the loss optimises);
- "oracle" mIoU: every segment takes its majority true class. Labels are used here ONLY to diagnose the
  partition's quality; nothing is selected with them;
- concepts used per image (the adaptive count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from acseg.assignment import channel_argmax
from acseg.kmeans import centroid_scores, kmeans
from acseg.losses import affinity, modularity, modularity_matrix
from acseg.metrics import ConfusionAccumulator, hungarian_miou


def majority_relabel(segments: torch.Tensor, labels: torch.Tensor, n_classes: int, ignore_index: int) -> torch.Tensor:
    """Each segment id -> the majority true class of its non-void pixels (the oracle)."""
    valid = labels != ignore_index
    n_seg = int(segments.max()) + 1
    counts = torch.zeros(n_seg, n_classes, dtype=torch.long)
    counts.index_put_((segments[valid], labels[valid]), torch.ones_like(labels[valid]), accumulate=True)
    return counts.argmax(1)[segments]


def hard_modularity(features: torch.Tensor, segments: torch.Tensor) -> float:
    """Newman's Q of a hard partition [n] of one image's patches [n, d]."""
    w, two_m = modularity_matrix(affinity(features[None]))
    same = (segments[:, None] == segments[None]).float()[None]
    return modularity(same, w, two_m).item()


@torch.no_grad()
def diagnose(model, feats, spec, read_label, device, seed: int = 0, progress: bool = True) -> dict:
    """``read_label(name)``: the decoded class ids of an evaluation image."""
    k = model.generator.n_prototypes
    learned_oracle = ConfusionAccumulator(spec.n_classes, spec.n_classes, spec.ignore_index)
    kmeans_oracle = ConfusionAccumulator(spec.n_classes, spec.n_classes, spec.ignore_index)
    q_learned, q_kmeans, counts = [], [], []
    for i, name in enumerate(tqdm(feats.names, desc="diagnose", disable=not progress, unit="image")):
        labels = torch.from_numpy(read_label(name))
        image = feats.take([i])
        f = image.features.to(device)
        seg = model(f, tuple(labels.shape), image.cls_attention.to(device))
        x = model.prepare(f)[0]
        counts.append(int(seg.n_concepts[0]))
        q_learned.append(hard_modularity(x, seg.patch_concepts[0].flatten()))
        km = kmeans(x, k, seed=seed, cosine=True, iters=50)
        q_kmeans.append(hard_modularity(x, km.labels))
        maps = centroid_scores(x, km.centroids, cosine=True).T.reshape(1, k, *f.shape[1:3])
        km_pixels = channel_argmax(F.interpolate(maps, size=tuple(labels.shape), mode="bilinear", align_corners=False))[0]
        learned_oracle.update(majority_relabel(seg.concepts[0].cpu(), labels, spec.n_classes, spec.ignore_index), labels)
        kmeans_oracle.update(majority_relabel(km_pixels.cpu(), labels, spec.n_classes, spec.ignore_index), labels)
    c = torch.tensor(counts, dtype=torch.float)
    return {
        "prototypes": k,
        "modularity_learned": float(torch.tensor(q_learned).mean()),
        "modularity_per_image_kmeans": float(torch.tensor(q_kmeans).mean()),
        "oracle_miou_learned": hungarian_miou(learned_oracle.matrix.numpy()).miou,
        "oracle_miou_per_image_kmeans": hungarian_miou(kmeans_oracle.matrix.numpy()).miou,
        "concepts_per_image_mean": float(c.mean()),
        "concepts_per_image_hist": {int(v): int((c == v).sum()) for v in c.unique()},
    }
