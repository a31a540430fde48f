"""How alike an image's concepts are before training: the untrained concept generator a training of that seed
starts from (bench.methods.acseg.untrained_model), applied to every val image; the mean cosine between the image's
concepts and the median margin by which a patch's winning concept beats the runner-up. At a cosine near 1 every
winner, in the assignment and in the loss's max over concepts, is decided by rounding-sized margins.

    python studies/initial_concepts.py [--dataset camvid ...] [--scales 1,10,100] [--seeds 0,1,2]

Reads the feature cache (after `dvc repro`); rows to reports/variants/initial_concepts.csv. Seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def concept_similarity(cfg, seed: int) -> dict:
    """Mean off-diagonal cosine between each val image's concepts, and the median top-1 minus top-2 cosine of its
    patches, for the untrained generator of ``seed``."""
    import torch
    import torch.nn.functional as F

    from acseg.assignment import cosine_assignment
    from bench.features import load_features
    from bench.methods import get_method
    from bench.methods.acseg import untrained_model

    train, val = load_features(cfg, cfg.data.train_split), load_features(cfg, cfg.data.eval_split)
    model = untrained_model(cfg, seed, train, get_method("acseg").n_clusters(cfg))
    k, cosines, margins = cfg.acseg.prototypes, [], []
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, len(val), 16):
            for images in val.groups(range(start, min(start + 16, len(val)))):
                x = model.prepare(images.features)
                concepts = model.generator(x)
                unit = F.normalize(concepts, dim=-1)
                cosines.append((unit @ unit.transpose(1, 2))[:, off_diagonal].mean(-1))
                top = cosine_assignment(x, concepts).topk(2, dim=-1).values
                margins.append((top[..., 0] - top[..., 1]).flatten())
    return {"concept_cosine_mean": torch.cat(cosines).mean().item(),
            "patch_margin_median": torch.cat(margins).median().item()}


def main() -> None:
    from bench.schema import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="default: benchmark.datasets")
    parser.add_argument("--scales", default="1,10,100", help="acseg.prototype_scale values, comma list")
    parser.add_argument("--seeds", help="comma list (default: benchmark.seeds)")
    parser.add_argument("--out", default="reports/variants/initial_concepts.csv")
    args = parser.parse_args()
    rows = []
    for dataset in args.dataset or load_config("params.yaml").benchmark.datasets:
        for scale in [float(s) for s in args.scales.split(",")]:
            cfg = load_config("params.yaml", dataset=dataset, overrides=[f"acseg.prototype_scale={scale}"])
            for seed in [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.benchmark.seeds:
                rows.append({"dataset": dataset, "prototype_scale": scale, "seed": seed,
                             **concept_similarity(cfg, seed)})
                r = rows[-1]
                print(f"{dataset} prototype_scale {scale:g} seed {seed}: concepts' mean cosine "
                      f"{r['concept_cosine_mean']:.3f}, median patch margin {r['patch_margin_median']:.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).round(4).to_csv(out, index=False)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
