"""Where a float-rounding difference grows in ACSeg (issue 19, item 3): the same seed trained on 1 and on 2 torch
threads (another order of float sums, as on another processor), in float32 and in float64, watched step by step.

For each precision: the generator's parameters after every ``--every`` steps of both trainings, as the relative
distance ||theta_1 - theta_2|| / ||theta_2||; after training, the share of val patches whose concept differs between
the two generators (by prototype slot, and by partition: slots matched per image); and, the generator held fixed (the 2-thread one), the share of the cluster split's concept
regions that the classifier's k-means puts in another class when it runs on 1 thread instead of 2 (classes matched
by the Hungarian method). Rows to reports/variants/thread_divergence_<dataset>.csv, the curves beside them (.png).

    python pipelines/thread_divergence.py [--dataset camvid] [--seed 0] [--every 5]

Run from the repository root after `dvc repro` (it reads the feature cache). About 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd


def flat_parameters(optimizer) -> "torch.Tensor":
    import torch

    return torch.cat([p.detach().double().flatten() for group in optimizer.param_groups for p in group["params"]])


@contextmanager
def snapshots(every: int) -> Iterator[dict[int, "torch.Tensor"]]:
    """The trained parameters after step 1 and every ``every`` steps of the training inside the block (torch's global
    optimizer hook: the training code is untouched)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    taken: dict[int, "torch.Tensor"] = {}
    steps = [0]

    def hook(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] % every == 0 or steps[0] == 1:
            taken[steps[0]] = flat_parameters(optimizer)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield taken
    finally:
        handle.remove()


def matched_disagreement(a, b, k: int) -> float:
    """Share of items whose class differs between two labellings once their class ids are matched one-to-one (the
    evaluation's own Hungarian matching, on their confusion matrix)."""
    from acseg.metrics import confusion_matrix, hungarian_match

    counts = confusion_matrix(a, b, k, k, ignore_index=-1).numpy()
    mapping = hungarian_match(counts)
    matched = sum(counts[i, j] for i, j in enumerate(mapping) if j >= 0)
    return 1.0 - matched / len(a)


def main() -> None:
    import torch

    from acseg.assignment import hard_assignment
    from acseg.classifier import fit_concept_classifier
    from bench.config import load_config, with_overrides
    from bench.data import atomic_path
    from bench.features import load_features
    from bench.methods import get_method
    from bench.methods.acseg import PRECISION, collect_regions, train_generator
    from bench.runs import training_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=5, help="steps between parameter snapshots")
    parser.add_argument("--out", help="default: reports/variants/thread_divergence_<dataset>.csv")
    args = parser.parse_args()
    device, rows = torch.device("cpu"), []
    for precision in ("float32", "float64"):
        cfg = load_config("params.yaml", dataset=args.dataset, overrides=[f"acseg.train.precision={precision}"])
        train, cluster = load_features(cfg, cfg.data.train_split), load_features(cfg, cfg.data.cluster_split)
        val = load_features(cfg, cfg.data.eval_split)
        k = get_method("acseg").n_clusters(cfg)
        on = {threads: with_overrides(cfg, {"run.train_threads": threads}) for threads in (1, 2)}
        taken, models = {}, {}
        for threads in (1, 2):
            with training_threads(on[threads]), snapshots(args.every) as taken[threads]:
                models[threads], _ = train_generator(cfg, args.seed, train, k, device, progress=False)
        for step, theta in taken[2].items():
            rows.append({"dataset": args.dataset, "precision": precision, "seed": args.seed, "step": step,
                         "relative_difference": ((taken[1][step] - theta).norm() / theta.norm()).item()})
        with torch.no_grad():  # the concepts of every val image under each generator
            concepts = [[c for start in range(0, len(val), 16)
                         for images in val.groups(range(start, min(start + 16, len(val))))
                         for c in hard_assignment(models[t].regions(images.features)[2]).flatten(1)]
                        for t in (1, 2)]
        patches = sum(len(c) for c in concepts[0])
        # the same prototype slot, and the same partition whatever the slots are called (matched per image)
        patch_share = sum(int((a != b).sum()) for a, b in zip(*concepts)) / patches
        partition_share = sum(matched_disagreement(a, b, cfg.acseg.prototypes) * len(a)
                              for a, b in zip(*concepts)) / patches
        regions, _ = collect_regions(models[2], cluster, device)
        labels, c = {}, cfg.acseg.classifier
        for threads in (1, 2):
            with training_threads(on[threads]):
                labels[threads] = fit_concept_classifier(regions, k, seed=args.seed, cosine=c.cosine, iters=c.iters,
                                                         n_init=c.n_init, dtype=PRECISION[precision]).labels
        region_share = matched_disagreement(labels[1], labels[2], k)
        last = rows[-1]["relative_difference"]
        rows.append({"dataset": args.dataset, "precision": precision, "seed": args.seed, "step": "val_patches",
                     "relative_difference": patch_share})
        rows.append({"dataset": args.dataset, "precision": precision, "seed": args.seed, "step": "val_partitions",
                     "relative_difference": partition_share})
        rows.append({"dataset": args.dataset, "precision": precision, "seed": args.seed, "step": "classifier_regions",
                     "relative_difference": region_share})
        print(f"{args.dataset} {precision} seed {args.seed}: parameters {last:.2e} apart after training; "
              f"{100 * patch_share:.2f} % of val patches in another concept slot, {100 * partition_share:.2f} % in "
              f"another part of their image's partition (slots matched per image); the classifier alone (same generator) "
              f"puts {100 * region_share:.2f} % of {len(regions)} regions in another class", flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out or f"reports/variants/thread_divergence_{args.dataset}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    figure(df, out.with_suffix(".png"))
    print(f"-> {out}, {out.with_suffix('.png')}")


def figure(df: pd.DataFrame, path: Path) -> None:
    from bench.figures import pyplot

    plt = pyplot()
    curves = df[pd.to_numeric(df.step, errors="coerce").notna()].astype({"step": int})
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for precision, d in curves.groupby("precision"):
        ax.semilogy(d.step, d.relative_difference.clip(lower=1e-18), marker=".", label=precision)
    ax.set_xlabel("training step")
    ax.set_ylabel("||theta(1 thread) - theta(2)|| / ||theta||")
    ax.set_title(f"{df.dataset.iloc[0]}, seed {df.seed.iloc[0]}: 1 vs 2 training threads", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
