"""Does a consensus classifier keep 1- and 2-thread trainings together? (The concept classifier's k-means restarts.)

The concept classifier keeps the lowest-inertia of its k-means restarts, and near-best restarts class up to 19 % of
the regions otherwise (studies/classifier_restarts.py), so a slightly different generator can make another one
win. Two label-free rules that do not hang on which near-equal inertia is lowest are compared with it, on the same
restarts of the same trained generators: the medoid restart (the one agreeing most with the others, mean adjusted
Rand index) and evidence accumulation (average linkage on the restarts' co-association, cut into K classes). Each
rule classes the val concepts of the benchmark's generators (2 threads) and of the same seeds trained on 1 thread
(the `threads` sweep's point `acseg_1_thread`); the 1-vs-2-thread gap per seed says whether the rule closes it.

    python studies/classifier_consensus.py [--dataset camvid ...] [--seeds 0,1,2] [--one-thread-runs DIR]

Reads the trained runs (after `dvc repro` and the `threads` sweep's `acseg_1_thread` point, whose runs folder
``--one-thread-runs`` names); rows to reports/variants/classifier_consensus.csv. About a minute per dataset on 2 CPU
cores.

The consensus rules (:func:`medoid_restart`, :func:`co_association`, :func:`consensus_partition`,
:func:`partition_centroids`) and the adjusted Rand index they rest on live here: only this study uses them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

ONE_THREAD_RUNS = "runs_variants/threads/acseg_1_thread"


# ------------------------------------------------------------------------------------------- consensus rules


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Hubert and Arabie's adjusted Rand index of two labellings [N] of the same items (non-negative ids): 1 for the
    same partition under any names, about 0 for unrelated ones. Compares two clusterings, never with ground truth."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    table = torch.bincount(a.long() * kb + b.long(), minlength=ka * kb).reshape(ka, kb).double()

    def pairs(counts: torch.Tensor) -> float:
        return (counts * (counts - 1) / 2).sum().item()

    together, in_a, in_b = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = in_a * in_b / (len(a) * (len(a) - 1) / 2)
    top = 0.5 * (in_a + in_b) - expected
    return 1.0 if top == 0 else (together - expected) / top


def medoid_restart(labelings: torch.Tensor) -> int:
    """Of R clusterings [R, M] of the same items (e.g. the classifier's k-means restarts), the index of the one that
    agrees most with the others (highest mean adjusted Rand index): the centre of the restarts, a label-free choice
    that does not hang on which of several near-equal inertias is lowest."""
    r = labelings.shape[0]
    agreement = torch.eye(r, dtype=torch.float64)
    for i in range(r):
        for j in range(i + 1, r):
            agreement[i, j] = agreement[j, i] = adjusted_rand_index(labelings[i], labelings[j])
    return int(agreement.mean(1).argmax())


def co_association(labelings: torch.Tensor) -> torch.Tensor:
    """[R, M] clusterings -> [M, M]: the share of the R clusterings that put items i and j in one cluster."""
    member = F.one_hot(labelings).float()  # [R, M, K]
    return torch.einsum("rik,rjk->ij", member, member) / labelings.shape[0]


def consensus_partition(labelings: torch.Tensor, k: int) -> torch.Tensor:
    """Evidence accumulation (Fred and Jain, 2005): average-linkage clustering of the items under the distance
    1 - co-association of R clusterings [R, M], cut into k clusters -> labels [M] in [0, k)."""
    import numpy as np
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distance = (1 - co_association(labelings)).double().numpy()
    np.fill_diagonal(distance, 0)
    tree = linkage(squareform(distance, checks=False), method="average")
    labels = torch.from_numpy(fcluster(tree, k, criterion="maxclust") - 1).long()
    return torch.unique(labels, return_inverse=True)[1]  # ids 0..m-1 (a cut can give m < k clusters on ties)


def partition_centroids(embeddings: torch.Tensor, labels: torch.Tensor, k: int, cosine: bool = True) -> torch.Tensor:
    """The centroid [k, d] of each cluster of a partition (on the unit sphere with ``cosine``, as the spherical
    k-means' centroids), so that any partition of the regions classes new concepts as
    :func:`acseg.classifier.classify_concepts`."""
    from acseg.kmeans import cluster_means

    x = F.normalize(embeddings.double(), dim=-1) if cosine else embeddings.double()
    means, _ = cluster_means(x, torch.ones(len(x), dtype=x.dtype), labels, k)
    return (F.normalize(means, dim=-1) if cosine else means).float()


# ------------------------------------------------------------------------------------------------- study


def rule_mious(cfg, seed: int) -> dict[str, float]:
    """val mIoU of one trained generator under each rule of choosing the classifier from its k-means restarts."""
    from acseg.kmeans import kmeans
    from bench.data import SegmentationSplit, dataset_spec, locate
    from bench.evaluate import evaluate
    from bench.features import load_features
    from bench.methods import get_method
    from bench.methods.acseg import collect_regions
    from bench.store import load_fitted

    device, c = torch.device("cpu"), cfg.acseg.classifier
    model, facts = load_fitted(cfg, "acseg", seed, device)[:2]
    regions, _ = collect_regions(model, load_features(cfg, cfg.data.cluster_split), device)
    k = model.class_centroids.shape[0]
    # the classifier's own k-means call (as the harness fits it), every restart kept
    fit = kmeans(regions, k, seed=seed, iters=c.iters, cosine=c.cosine, n_init=c.n_init,
                 dtype=getattr(torch, cfg.acseg.train.precision), keep_restarts=True)
    labelings = torch.stack([r.labels for r in fit.restarts])
    centroids = {"lowest_inertia": fit.centroids.float(),
                 "medoid_restart": fit.restarts[medoid_restart(labelings)].centroids.float(),
                 "co_association": partition_centroids(regions, consensus_partition(labelings, k), k, c.cosine)}
    spec = dataset_spec(cfg)
    split = SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), cfg.data.eval_split)
    method, out = get_method("acseg"), {}
    for rule, rule_centroids in centroids.items():
        model.class_centroids.copy_(rule_centroids)
        predictor = method.predictor(cfg, model, facts, device, cfg.data.eval_split)
        ev = evaluate(predictor, load_features(cfg, cfg.data.eval_split, stream=True), spec, split.read_label, k,
                      device, progress=False)
        out[rule] = ev.scores.miou
    return out


def main() -> None:
    from bench.schema import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="default: benchmark.datasets")
    parser.add_argument("--seeds", help="comma list (default: benchmark.seeds)")
    parser.add_argument("--one-thread-runs", default=ONE_THREAD_RUNS,
                        help=f"runs folder of the same seeds trained on 1 thread (default: {ONE_THREAD_RUNS})")
    parser.add_argument("--out", default="reports/variants/classifier_consensus.csv")
    args = parser.parse_args()
    rows = []
    for dataset in args.dataset or load_config("params.yaml").benchmark.datasets:
        for threads, runs in ((2, None), (1, args.one_thread_runs)):
            cfg = load_config("params.yaml", dataset=dataset, overrides=[f"run.runs_dir={runs}"] if runs else [])
            for seed in [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.benchmark.seeds:
                for rule, miou in rule_mious(cfg, seed).items():
                    rows.append({"dataset": dataset, "seed": seed, "train_threads": threads, "rule": rule,
                                 "miou": round(miou, 2)})
                print(f"{dataset} seed {seed}, {threads} thread(s): "
                      + ", ".join(f"{r['rule']} {r['miou']:.2f}" for r in rows[-3:]), flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    gaps = df.pivot_table(index=["dataset", "rule", "seed"], columns="train_threads", values="miou")
    gaps = (gaps[1] - gaps[2]).abs().round(2).unstack("seed")
    print("1-vs-2-thread gap per seed (mIoU):")
    print(gaps.to_string())
    print(f"-> {out}")


if __name__ == "__main__":
    main()
