"""Where a float-rounding difference grows in ACSeg: the same seed trained on 1 and on 2 torch threads (another
order of float sums, as on another processor), in float32 and in float64, watched step by step.

For each precision: the generator's parameters after every ``--every`` steps of both trainings, as the relative
distance ||theta_1 - theta_2|| / ||theta_2||; after training, the share of val patches whose concept differs between
the two generators (by prototype slot, and by partition: slots matched per image); and, the generator held fixed
(the 2-thread one), the share of the cluster split's concept regions that the classifier's k-means puts in another
class when it runs on 1 thread instead of 2 (classes matched by the Hungarian method). Rows to
reports/variants/thread_divergence_<dataset>.csv, the curves beside them (.png).

    python studies/thread_divergence.py [--dataset camvid] [--seed 0] [--every 5] [--precision float32 ...]
                                        [--set section.field=value ...] [--out PATH]

``--set`` trains another configuration than the default (e.g. acseg.intensity_temperature=0.1); give it its own
``--out``. The CSVs measured before pinned arithmetic (README, Stability) come back with
``--set acseg.arithmetic=native``.

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
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def compare_threads(cfg, seed: int, every: int, device) -> list[dict]:
    """One configuration and seed trained on 1 and on 2 threads: the rows of the parameter gap per step, then the
    shares of val patches and partitions that differ, and of regions the classifier alone classes otherwise."""
    import torch

    from acseg.assignment import hard_assignment
    from acseg.classifier import fit_concept_classifier
    from acseg.metrics import matched_disagreement
    from bench.features import load_features
    from bench.methods import get_method
    from bench.methods.acseg import collect_regions, train_generator

    precision, dataset, rows = cfg.acseg.train.precision, cfg.data.dataset, []
    train, cluster = load_features(cfg, cfg.data.train_split), load_features(cfg, cfg.data.cluster_split)
    val = load_features(cfg, cfg.data.eval_split)
    k = get_method("acseg").n_clusters(cfg)
    taken, models = {}, {}
    for threads in (1, 2):
        with torch_threads(threads), snapshots(every) as taken[threads]:
            models[threads], _ = train_generator(cfg, seed, train, k, device, progress=False)
    row = {"dataset": dataset, "precision": precision, "seed": seed}
    for step, theta in taken[2].items():
        gap = ((taken[1][step] - theta).norm() / theta.norm()).item()
        rows.append({**row, "step": step, "relative_difference": gap})
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
        with torch_threads(threads):
            labels[threads] = fit_concept_classifier(regions, k, seed=seed, cosine=c.cosine, iters=c.iters,
                                                     n_init=c.n_init, dtype=getattr(torch, precision)).labels
    region_share = matched_disagreement(labels[1], labels[2], k)
    last = rows[-1]["relative_difference"]
    rows.append({**row, "step": "val_patches", "relative_difference": patch_share})
    rows.append({**row, "step": "val_partitions", "relative_difference": partition_share})
    rows.append({**row, "step": "classifier_regions", "relative_difference": region_share})
    print(f"{dataset} {precision} seed {seed}: parameters {last:.2e} apart after training; "
          f"{100 * patch_share:.2f} % of val patches in another concept slot, {100 * partition_share:.2f} % in "
          f"another part of their image's partition (slots matched per image); the classifier alone (same generator) "
          f"puts {100 * region_share:.2f} % of {len(regions)} regions in another class", flush=True)
    return rows


def main() -> None:
    from bench.schema import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--seed", type=int, action="append", help="repeatable (default: 0)")
    parser.add_argument("--every", type=int, default=5, help="steps between parameter snapshots")
    parser.add_argument("--precision", action="append", choices=["float32", "float64"],
                        help="default: float32 and float64")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter override over params.yaml, repeatable")
    parser.add_argument("--out", help="default: reports/variants/thread_divergence_<dataset>.csv")
    args = parser.parse_args()
    if load_config("params.yaml", dataset=args.dataset, overrides=args.set).acseg.arithmetic == "pinned":
        from bench.arithmetic import pin

        pin()  # before torch starts (both trainings run in this process)
    import torch

    device, rows = torch.device("cpu"), []
    for precision in args.precision or ("float32", "float64"):
        cfg = load_config("params.yaml", dataset=args.dataset,
                          overrides=[*args.set, f"acseg.train.precision={precision}"])
        for seed in args.seed or [0]:
            rows += compare_threads(cfg, seed, args.every, device)
    df = pd.DataFrame(rows)
    out = Path(args.out or f"reports/variants/thread_divergence_{args.dataset}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    figure(df, out.with_suffix(".png"), " ".join(args.set))
    print(f"-> {out}, {out.with_suffix('.png')}")


def figure(df: pd.DataFrame, path: Path, config: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = df[pd.to_numeric(df.step, errors="coerce").notna()].astype({"step": int})
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    several_seeds = curves.seed.nunique() > 1
    for (precision, seed), d in curves.groupby(["precision", "seed"]):
        ax.semilogy(d.step, d.relative_difference.clip(lower=1e-18), marker=".",
                    label=f"{precision}, seed {seed}" if several_seeds else precision)
    ax.set_xlabel("training step")
    ax.set_ylabel("||theta(1 thread) - theta(2)|| / ||theta||")
    seeds = ", ".join(str(s) for s in sorted(df.seed.unique()))
    ax.set_title(f"{df.dataset.iloc[0]}, seed {seeds}: 1 vs 2 training threads" + (f"\n{config}" if config else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
