"""How much the concept classifier's choice hangs on small differences: the k-means over the concept regions of a
trained ACSeg generator, restarted from independent k-means++ draws; the restarts sorted by inertia, each with its
inertia above the best and the share of regions it puts in another class than the best (classes matched by the
Hungarian method). Where solutions that class many regions otherwise lie within a hair of the best inertia, a small
change of the regions (another generator, however close) can make another one win.

    python studies/classifier_restarts.py [--dataset camvid ...] [--seeds 0,1,2] [--restarts 50] [--top 6]

Reads the benchmark's trained ACSeg runs (runs/<dataset>/acseg/seed*, after `dvc repro`); rows to
reports/variants/classifier_restarts.csv. About a minute per dataset on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def restarts(cfg, seed: int, n_restarts: int) -> list:
    """The k-means of one trained run's classifier, from ``n_restarts`` independent draws, sorted by inertia, and
    the number of regions."""
    import torch

    from acseg.kmeans import kmeans
    from bench.features import load_features
    from bench.methods.acseg import collect_regions
    from bench.store import load_fitted

    device, c = torch.device("cpu"), cfg.acseg.classifier
    model, facts = load_fitted(cfg, "acseg", seed, device)[:2]
    regions, sizes = collect_regions(model, load_features(cfg, cfg.data.cluster_split), device,
                                     background=model.background)
    k = model.class_centroids.shape[0]
    results = [kmeans(regions, k, seed=draw, iters=c.iters, cosine=c.cosine, n_init=1,
                      weights=sizes if c.weighted else None) for draw in range(n_restarts)]
    return sorted(results, key=lambda r: r.inertia), k


def main() -> None:
    from acseg.metrics import matched_disagreement
    from bench.schema import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="default: benchmark.datasets")
    parser.add_argument("--seeds", help="comma list (default: benchmark.seeds)")
    parser.add_argument("--restarts", type=int, default=50,
                        help="independent k-means++ draws (the classifier's n_init)")
    parser.add_argument("--top", type=int, default=6, help="restarts listed per run, best first")
    parser.add_argument("--out", default="reports/variants/classifier_restarts.csv")
    args = parser.parse_args()
    base = load_config("params.yaml")
    rows = []
    for dataset in args.dataset or base.benchmark.datasets:
        cfg = load_config("params.yaml", dataset=dataset)
        for seed in [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.benchmark.seeds:
            ranked, k = restarts(cfg, seed, args.restarts)
            best = ranked[0]
            for rank, r in enumerate(ranked[: args.top]):
                rows.append({"dataset": dataset, "seed": seed, "rank": rank, "inertia": r.inertia,
                             "inertia_above_best_pct": 100 * (r.inertia / best.inertia - 1),
                             "regions_classed_otherwise_pct": 100 * matched_disagreement(r.labels, best.labels, k),
                             "regions": len(best.labels)})
            near = [row for row in rows[-args.top:] if row["rank"] > 0]
            print(f"{dataset} seed {seed}: the next {len(near)} restarts lie "
                  f"{near[0]['inertia_above_best_pct']:.3f}-{near[-1]['inertia_above_best_pct']:.3f} % above the best "
                  f"inertia and class {min(r['regions_classed_otherwise_pct'] for r in near):.1f}-"
                  f"{max(r['regions_classed_otherwise_pct'] for r in near):.1f} % of {len(best.labels)} regions "
                  "otherwise", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).round(4).to_csv(out, index=False)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
