"""Diagnostics of a trained ACSeg model: where it falls short, in numbers, each half of the method on its own.

For every evaluation image, ACSeg's learned partition is set beside per-image k-means into the same number of
segments and beside the ground-truth partition (each patch's majority class), on the same (centred) features:

- modularity Q of each partition on each pixel graph of acseg.losses (dense, k-NN, thresholded): what the loss
  optimises, and whether its optimum is the semantic partition;
- "oracle" mIoU: every segment takes its majority true class (the partition's quality);
- concepts used per image (the adaptive count);
- the classifier's ceiling: the model's own concept classifier (the same region embeddings and k-means settings)
  fitted on the ground-truth regions of the cluster split and applied to those of the evaluation split, every pixel
  taking its region's class (the second half's quality, whatever the partitions).

Labels are used here ONLY to diagnose; nothing is selected with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from acseg.assignment import channel_argmax
from acseg.classifier import classify_concepts, fit_concept_classifier, region_embeddings
from acseg.kmeans import centroid_scores, kmeans
from acseg.losses import Graph, modularity, modularity_matrix
from acseg.metrics import ConfusionAccumulator, hungarian_miou


def majority_relabel(segments: torch.Tensor, labels: torch.Tensor, n_classes: int, ignore_index: int) -> torch.Tensor:
    """Each segment id -> the majority true class of its non-void pixels (the oracle)."""
    valid = labels != ignore_index
    n_seg = int(segments.max()) + 1
    counts = torch.zeros(n_seg, n_classes, dtype=torch.long)
    counts.index_put_((segments[valid], labels[valid]), torch.ones_like(labels[valid]), accumulate=True)
    return counts.argmax(1)[segments]


def patch_majority(labels: torch.Tensor, grid: tuple[int, int], n_classes: int, ignore_index: int) -> torch.Tensor:
    """The ground-truth partition of a patch grid: each patch's majority class among its non-void pixels, or
    ``n_classes`` (a group of its own) where all are void. labels [H, W] -> [h * w]."""
    h, w = grid
    height, width = labels.shape
    rows = (torch.arange(height) * h // height)[:, None]
    cols = (torch.arange(width) * w // width)[None, :]
    patch = (rows * w + cols).expand(height, width)
    valid = labels != ignore_index
    counts = torch.zeros(h * w, n_classes + 1, dtype=torch.long)
    counts.index_put_((patch[valid], labels[valid]), torch.ones_like(labels[valid]), accumulate=True)
    counts[:, n_classes] = (counts[:, :n_classes].sum(1) == 0).long()  # all void: its own group
    return counts.argmax(1)


def hard_modularity(features: torch.Tensor, segments: torch.Tensor, graph: Graph = Graph()) -> float:
    """Newman's Q of a hard partition [n] of one image's patches [n, d] on ``graph``."""
    w, two_m = modularity_matrix(graph(features[None]))
    same = (segments[:, None] == segments[None]).float()[None]
    return modularity(same, w, two_m).item()


def diagnostic_graphs(cfg, n_patches: int) -> dict[str, Graph]:
    """The graphs every partition is scored on: dense, k-NN and thresholded, with the training graph's k scaled
    from the pixels the loss sees to all of an image's patches."""
    g, seen = cfg.acseg.graph, cfg.acseg.train.pixel_samples or n_patches
    return {"dense": Graph(), "knn": Graph("knn", k=max(1, round(g.k * n_patches / min(seen, n_patches)))),
            "threshold": Graph("threshold", threshold=g.threshold)}


@torch.no_grad()
def diagnose(cfg, model, feats, spec, read_label, device, seed: int = 0, progress: bool = True,
             cluster=None) -> dict:
    """``read_label(name)``: the decoded class ids of an evaluation image; ``cluster``: (CachedFeatures,
    read_label) of the cluster split, for the classifier's ceiling."""
    k = model.generator.n_prototypes
    c = spec.n_classes
    learned_oracle = ConfusionAccumulator(c, c, spec.ignore_index)
    kmeans_oracle = ConfusionAccumulator(c, c, spec.ignore_index)
    q: dict[str, dict[str, list[float]]] = {}
    counts = []
    for i, name in enumerate(tqdm(feats.names, desc="diagnose", disable=not progress, unit="image")):
        labels = torch.from_numpy(read_label(name))
        image = feats.take([i])
        f = image.features.to(device)
        grid = tuple(f.shape[1:3])
        seg = model(f, tuple(labels.shape), image.cls_attention.to(device))
        x = model.prepare(f)[0]
        counts.append(int(seg.n_concepts[0]))
        km = kmeans(x, k, seed=seed, cosine=True, iters=50)
        partitions = {"acseg": seg.patch_concepts[0].flatten(), "per_image_kmeans": km.labels,
                      "ground_truth": patch_majority(labels, grid, c, spec.ignore_index)}
        for graph_name, graph in diagnostic_graphs(cfg, x.shape[0]).items():
            for part_name, part in partitions.items():
                q.setdefault(graph_name, {}).setdefault(part_name, []).append(hard_modularity(x, part.to(x.device), graph))
        maps = centroid_scores(x, km.centroids, cosine=True).T.reshape(1, k, *grid)
        km_pixels = channel_argmax(F.interpolate(maps, size=tuple(labels.shape), mode="bilinear", align_corners=False))[0]
        learned_oracle.update(majority_relabel(seg.concepts[0].cpu(), labels, c, spec.ignore_index), labels)
        kmeans_oracle.update(majority_relabel(km_pixels.cpu(), labels, c, spec.ignore_index), labels)
    counts_t = torch.tensor(counts, dtype=torch.float)
    modularity_by_graph = {g: {p: float(torch.tensor(v).mean()) for p, v in parts.items()} for g, parts in q.items()}
    report = {
        "prototypes": k,
        "modularity_learned": modularity_by_graph["dense"]["acseg"],
        "modularity_per_image_kmeans": modularity_by_graph["dense"]["per_image_kmeans"],
        "modularity": modularity_by_graph,
        "oracle_miou_learned": hungarian_miou(learned_oracle.matrix.numpy()).miou,
        "oracle_miou_per_image_kmeans": hungarian_miou(kmeans_oracle.matrix.numpy()).miou,
        "concepts_per_image_mean": float(counts_t.mean()),
        "concepts_per_image_hist": {int(v): int((counts_t == v).sum()) for v in counts_t.unique()},
    }
    if cluster is not None:
        report["classifier_ceiling_miou"] = classifier_ceiling(cfg, model, cluster, (feats, read_label), spec, seed,
                                                               device)
    return report


def ground_truth_regions(embed, feats, read_label, spec, device):
    """Region embeddings [M, d], sizes [M] and, per image, (its partition [n], its region rows, grid, labels) of the
    ground-truth partitions of a split. ``embed``: cached features [1, h, w, d] -> the pixels [1, n, d] whose mean
    embeds a region (the model's own, or any other feature type, raw or centred)."""
    c = spec.n_classes
    embeddings, sizes, per_image = [], [], []
    for i, name in enumerate(feats.names):
        labels = torch.from_numpy(read_label(name))
        f = feats.take([i]).features.to(device)
        part = patch_majority(labels, tuple(f.shape[1:3]), c, spec.ignore_index)
        emb, count = region_embeddings(embed(f), part[None].to(device), c + 1)
        keep = (count[0] > 0) & (torch.arange(c + 1, device=device) < c)  # the all-void group is no region
        rows = torch.full((c + 1,), -1, dtype=torch.long)
        rows[keep.cpu()] = torch.arange(int(keep.sum())) + sum(len(e) for e in embeddings)
        embeddings.append(emb[0][keep].cpu())
        sizes.append(count[0][keep].cpu())
        per_image.append((part, rows, tuple(f.shape[1:3]), labels))
    return torch.cat(embeddings), torch.cat(sizes), per_image


def model_embedding(model):
    """How the model's concept classifier embeds a region: the mean of its prepared (centred) pixels, or of the raw
    features (``raw_regions``)."""
    def embed(f):
        x = model.prepare(f)
        return x + model.feature_mean if model.raw_regions else x
    return embed


def ceiling_miou(cluster_regions, evaluated_regions, spec, k: int, seed: int, cosine: bool = True, iters: int = 100,
                 n_init: int = 1, weighted: bool = False) -> float:
    """mIoU of a concept classifier (k-means into ``k`` classes over the region embeddings of the cluster split)
    applied to the regions of the evaluated split, every pixel taking its region's class. Regions: the output of
    :func:`ground_truth_regions`. A cluster split with fewer regions than ``k`` (a handful of images) gets one class
    per region."""
    train_emb, train_sizes, _ = cluster_regions
    eval_emb, _, per_image = evaluated_regions
    k = min(k, train_emb.shape[0])
    fitted = fit_concept_classifier(train_emb, k, seed=seed, cosine=cosine, iters=iters, n_init=n_init,
                                    weights=train_sizes if weighted else None)
    classes = classify_concepts(eval_emb, fitted.centroids, cosine)
    confusion = ConfusionAccumulator(k, spec.n_classes, spec.ignore_index)
    for part, rows, grid, labels in per_image:
        region_class = torch.where(rows >= 0, classes[rows.clamp_min(0)], 0)
        patch_class = region_class[part].reshape(1, 1, *grid).float()
        pixels = F.interpolate(patch_class, size=tuple(labels.shape), mode="nearest")[0, 0].long()
        confusion.update(pixels, labels)
    return hungarian_miou(confusion.matrix.numpy()).miou


def classifier_ceiling(cfg, model, cluster, evaluated, spec, seed: int, device) -> float:
    """mIoU of the model's concept classifier on ground-truth partitions (see the module's docstring)."""
    cc, embed = cfg.acseg.classifier, model_embedding(model)
    return ceiling_miou(ground_truth_regions(embed, *cluster, spec, device),
                        ground_truth_regions(embed, *evaluated, spec, device), spec,
                        spec.n_classes - int(model.background), seed, cosine=cc.cosine, iters=cc.iters,
                        n_init=cc.n_init, weighted=cc.weighted)
