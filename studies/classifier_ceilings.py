"""The concept classifier's ceiling for each label-free way of embedding a region: the classifier (k-means over the
region embeddings of the cluster split into K = classes, every pixel taking its region's class) fitted and applied
on GROUND-TRUTH partitions (each patch's majority class), so the partitions are perfect and only the classifier is
measured. Labels only diagnose here: they make the partitions; nothing is fitted on them.

Variants: which cached features a region's mean is taken of (tokens, keys, both: the L2-normalised means side by
side), raw or centred by the training split's mean, regions weighted by their size or not. The classifier's own
settings (cosine, restarts, iterations) are acseg.classifier's. Rows to reports/classifier_ceilings.csv (one per
dataset, variant and classifier seed); the k-means floor of the same dataset beside them in the printout.

    python studies/classifier_ceilings.py [--dataset D ...] [--seeds 0,1,2]

Run from the repository root after `dvc repro` (it reads the feature cache and reports/results.csv). About a
minute per dataset on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

VARIANTS = {  # name: (feature types, centred, weighted)
    "tokens": (("tokens",), False, False),
    "tokens_centred": (("tokens",), True, False),
    "tokens_weighted": (("tokens",), False, True),
    "tokens_centred_weighted": (("tokens",), True, True),
    "keys": (("keys",), False, False),
    "keys_centred": (("keys",), True, False),
    "both": (("tokens", "keys"), False, False),
    "both_centred": (("tokens", "keys"), True, False),
}


def main() -> None:
    import torch
    import torch.nn.functional as F

    from bench.data import SegmentationSplit, dataset_spec, locate
    from bench.diagnose import ceiling_miou, ground_truth_regions
    from bench.features import load_features
    from bench.schema import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="default: every dataset of benchmark.datasets")
    parser.add_argument("--seeds", default="0,1,2", help="the classifier's k-means seeds")
    parser.add_argument("--out", default="reports/classifier_ceilings.csv")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    device = torch.device("cpu")
    base = load_config("params.yaml")
    rows = []
    for dataset in args.dataset or base.benchmark.datasets:
        cfg = load_config("params.yaml", dataset=dataset)
        spec, cc = dataset_spec(cfg), cfg.acseg.classifier
        root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
        splits = {name: SegmentationSplit(spec, root, name).read_label for name in (cfg.data.cluster_split,
                                                                                   cfg.data.eval_split)}
        regions = {}  # (feature type, centred, split) -> ground-truth regions
        for types, centred, _ in VARIANTS.values():
            for t in types:
                typed = load_config("params.yaml", dataset=dataset, overrides=[f"features.type={t}"])
                # the training split's mean feature (what the harness centres by), or none
                mean = load_features(typed, cfg.data.train_split).all_rows().float().mean(0) if centred else 0.0
                for split, read_label in splits.items():
                    if (t, centred, split) not in regions:
                        regions[t, centred, split] = ground_truth_regions(
                            lambda f, m=mean: f.flatten(1, 2).float() - m, load_features(typed, split), read_label,
                            spec, device)
        for name, (types, centred, weighted) in VARIANTS.items():
            def of(split):
                parts = [regions[t, centred, split] for t in types]
                if len(parts) == 1:
                    return parts[0]
                embedding = torch.cat([F.normalize(p[0], dim=-1) for p in parts], -1)
                return embedding, parts[0][1], parts[0][2]
            for seed in seeds:
                miou = ceiling_miou(of(cfg.data.cluster_split), of(cfg.data.eval_split), spec, spec.n_classes, seed,
                                    cosine=cc.cosine, iters=cc.iters, n_init=cc.n_init, weighted=weighted)
                rows.append({"dataset": dataset, "variant": name, "features": "+".join(types), "centred": centred,
                             "weighted": weighted, "seed": seed, "ceiling_miou": round(miou, 2),
                             "n_init": cc.n_init})
                print(f"{dataset} {name} seed {seed}: ceiling {miou:.2f}", flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    results = pd.read_csv(cfg.run.results_csv)
    for dataset, d in df.groupby("dataset", sort=False):
        floor = results[(results.dataset == dataset) & (results.method == "kmeans") & ~results.crf.astype(bool)].miou
        print(f"{dataset}: k-means floor (tokens, pixels) {floor.mean():.2f} +- {floor.std():.2f}")
        for name, v in d.groupby("variant", sort=False):  # mean +- sample std over the classifier seeds
            print(f"  {name}: ceiling {v.ceiling_miou.mean():.2f} +- {v.ceiling_miou.std():.2f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
