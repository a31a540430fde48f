"""Does a consensus classifier keep 1- and 2-thread trainings together? (issue 19, item 3: classifier restarts.)

The concept classifier keeps the lowest-inertia of its k-means restarts, and near-best restarts class up to 19 % of
the regions otherwise (pipelines/classifier_restarts.py), so a slightly different generator can make another one
win. Two label-free rules that do not hang on which near-equal inertia is lowest are compared with it, on the same
restarts of the same trained generators: the medoid restart (the one agreeing most with the others, mean adjusted
Rand index) and evidence accumulation (average linkage on the restarts' co-association, cut into K classes). Each
rule classes the val concepts of the benchmark's generators (2 threads) and of the same seeds trained on 1 thread
(the `threads` variants' `acseg_1_thread`); the 1-vs-2-thread gap per seed says whether the rule closes it.

    python pipelines/classifier_consensus.py [--dataset camvid ...] [--seeds 0,1,2]

Reads the trained runs (after `dvc repro` and `python pipelines/variants.py threads --variant acseg_1_thread`);
rows to reports/variants/classifier_consensus.csv. About a minute per dataset on 2 CPU cores.
"""

from __future__ import annotations

import argparse

import pandas as pd

ONE_THREAD_RUNS = "runs_variants/threads/acseg_1_thread"


def rule_mious(cfg, seed: int) -> dict[str, float]:
    """val mIoU of one trained generator under each rule of choosing the classifier from its k-means restarts."""
    import torch

    from acseg.classifier import consensus_partition, medoid_restart, partition_centroids
    from acseg.kmeans import kmeans
    from bench.data import SegmentationSplit, dataset_spec, locate
    from bench.evaluate import evaluate
    from bench.features import load_features
    from bench.methods.acseg import PRECISION, ACSegPredictor, collect_regions
    from bench.runs import load_fitted

    device, c = torch.device("cpu"), cfg.acseg.classifier
    model = load_fitted(cfg, "acseg", seed, device)[0]
    regions, _ = collect_regions(model, load_features(cfg, cfg.data.cluster_split), device)
    k = model.class_centroids.shape[0]
    # the classifier's own call (bench.methods.acseg.classifier_centroids), every restart kept
    fit = kmeans(regions, k, seed=seed, iters=c.iters, cosine=c.cosine, n_init=c.n_init,
                 dtype=PRECISION[cfg.acseg.train.precision], keep_restarts=True)
    labelings = torch.stack([r.labels for r in fit.restarts])
    centroids = {"lowest_inertia": fit.centroids.float(),
                 "medoid_restart": fit.restarts[medoid_restart(labelings)].centroids.float(),
                 "co_association": partition_centroids(regions, consensus_partition(labelings, k), k, c.cosine)}
    spec = dataset_spec(cfg)
    split = SegmentationSplit(spec, locate(spec, cfg.data.local_copy, cfg.data.download_dir), cfg.data.eval_split)
    out = {}
    for rule, rule_centroids in centroids.items():
        model.class_centroids.copy_(rule_centroids)
        ev = evaluate(ACSegPredictor(model), load_features(cfg, cfg.data.eval_split, stream=True), spec,
                      split.read_label, k, device, progress=False)
        out[rule] = ev.scores.miou
    return out


def main() -> None:
    from bench.config import load_config
    from bench.data import write_csv_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="default: benchmark.datasets")
    parser.add_argument("--seeds", help="comma list (default: benchmark.seeds)")
    parser.add_argument("--out", default="reports/variants/classifier_consensus.csv")
    args = parser.parse_args()
    rows = []
    for dataset in args.dataset or load_config("params.yaml").benchmark.datasets:
        for threads, runs in ((2, None), (1, ONE_THREAD_RUNS)):
            cfg = load_config("params.yaml", dataset=dataset, overrides=[f"run.runs_dir={runs}"] if runs else [])
            for seed in [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.benchmark.seeds:
                for rule, miou in rule_mious(cfg, seed).items():
                    rows.append({"dataset": dataset, "seed": seed, "train_threads": threads, "rule": rule,
                                 "miou": round(miou, 2)})
                print(f"{dataset} seed {seed}, {threads} thread(s): "
                      + ", ".join(f"{r['rule']} {r['miou']:.2f}" for r in rows[-3:]), flush=True)
    df = pd.DataFrame(rows)
    write_csv_atomic(args.out, df)
    gaps = df.pivot_table(index=["dataset", "rule", "seed"], columns="train_threads", values="miou")
    gaps = (gaps[1] - gaps[2]).abs().round(2).unstack("seed")
    print("1-vs-2-thread gap per seed (mIoU):")
    print(gaps.to_string())
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
