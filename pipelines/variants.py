"""Named sets of configurations run side by side on val: each variant is a method with parameter overrides, trained
and evaluated for every dataset and seed of its set by the pipeline's own steps, in a runs folder of its own. The
sets live in pipelines/variants.yaml (every configuration tried beyond the ablation sweeps, with why); rows go to
reports/variants/<set>.csv, a figure of every seed to reports/variants/<set>.png, and the printout gives
each variant's mean +- std, its 95 % CI and Welch's p against the set's reference variant.

    python pipelines/variants.py SET [--dataset D ...] [--variant NAME ...] [--seeds 0,1,2]

Run from the repository root after `dvc repro` (the feature cache is reused; runs go to runs_variants/<set>/, which
git ignores). A run already evaluated with exactly its config is reused. Nothing here changes a default: the
defaults live in conf/, and each choice made from these rows is written in the README with the rows it rests on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

SETS = Path(__file__).with_name("variants.yaml")


def run_variant(cfg, overrides: list[str], method: str, seed: int, benchmark_runs: str) -> dict:
    """Train and evaluate one method at one seed, reusing a run evaluated with exactly this config (its own, or the
    benchmark's in ``benchmark_runs``: locations are not part of a config's hash). A new run is the CLI's train and
    evaluate, each in a process of its own, so that each runs under its own acseg.arithmetic (bench/arithmetic.py
    must act before torch starts in a process)."""
    from bench.ablate import finished
    from bench.config import with_overrides

    metrics = finished(with_overrides(cfg, {"run.runs_dir": benchmark_runs}), method, seed) or finished(cfg, method, seed)
    if metrics is None:
        args = ["--dataset", cfg.data.dataset, "--method", method, "--seed", str(seed), "--quiet"]
        for override in overrides:
            args += ["--set", override]
        for command in ("train", "evaluate"):
            subprocess.run([sys.executable, "-m", "bench.cli", command, *args], check=True, stdout=subprocess.DEVNULL)
        metrics = finished(cfg, method, seed)
    return metrics


def main() -> None:
    from bench.config import load_config
    from bench.data import write_csv_atomic
    from bench.stats import format_ci, format_p, summarise, welch

    sets = yaml.safe_load(SETS.read_text())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=sorted(sets))
    parser.add_argument("--dataset", action="append", help="default: the set's datasets")
    parser.add_argument("--variant", action="append", help="default: every variant of the set")
    parser.add_argument("--seeds", help="comma list (default: the set's seeds, else benchmark.seeds)")
    args = parser.parse_args()
    spec = sets[args.set]
    variants = {name: v for name, v in spec["variants"].items() if not args.variant or name in args.variant}
    rows = []
    for dataset in args.dataset or spec["datasets"]:
        for name, variant in variants.items():
            overrides = {**spec.get("set", {}), **(variant.get("set") or {})}
            benchmark = load_config("params.yaml", dataset=dataset).run.runs_dir
            dotted = [*(f"{k}={v}" for k, v in overrides.items()), f"run.runs_dir=runs_variants/{args.set}/{name}"]
            cfg = load_config("params.yaml", dataset=dataset, overrides=dotted)
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else spec.get("seeds", cfg.benchmark.seeds)
            for seed in seeds:
                m = run_variant(cfg, dotted, variant["method"], seed, benchmark)
                rows.append({"set": args.set, "dataset": dataset, "variant": name, "method": variant["method"],
                             "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()), "seed": seed,
                             "miou": round(m["miou"], 2), "acc": round(m["acc"], 2),
                             "clusters_used": m.get("clusters_used"),
                             "concepts_per_image_mean": m.get("concepts_per_image_mean"),
                             "config_hash": m["config_hash"]})
                print(f"{dataset} {name} seed {seed}: mIoU {m['miou']:.2f}", flush=True)
    df = pd.DataFrame(rows)
    out = Path("reports/variants") / f"{args.set}.csv"
    if out.is_file() and (args.variant or args.dataset):  # a partial run updates its own rows only
        kept = pd.read_csv(out)
        kept = kept[~(kept.dataset.isin(df.dataset.unique()) & kept.variant.isin(df.variant.unique()))]
        df = pd.concat([kept, df], ignore_index=True)
    write_csv_atomic(out, df)
    reference = spec["reference"]
    for dataset, d in df.groupby("dataset", sort=False):
        base = d[d.variant == reference].miou.tolist()
        print(f"{dataset} (reference: {reference})")
        for name, v in d.groupby("variant", sort=False):
            s = summarise(v.miou.tolist())
            versus = welch(v.miou.tolist(), base) if name != reference and base else None
            print(f"  {name}: {s.mean:.2f} +- {s.std:.2f} {format_ci(s)}"
                  + (f", vs {reference} {versus.difference:+.2f} (p {format_p(versus.p_value)})" if versus else ""))
    figure(df, args.set, out.with_suffix(".png"))
    print(f"-> {out}, {out.with_suffix('.png')}")


def figure(df: pd.DataFrame, name: str, path: Path) -> None:
    """mIoU of every variant and seed, one panel per dataset (each seed its own marker, means as bars)."""
    from bench.figures import pyplot

    plt = pyplot()
    datasets, n = list(dict.fromkeys(df.dataset)), df.variant.nunique()
    if n > 8:  # many variants: one panel per row, so the figure stays readable at a page's width
        fig, axes = plt.subplots(len(datasets), 1, figsize=(1.2 + 0.55 * n, 3.6 * len(datasets)), squeeze=False)
        axes = axes[:, 0]
    else:
        fig, axes = plt.subplots(1, len(datasets), figsize=(1.2 + 0.9 * n * len(datasets), 3.8), squeeze=False)
        axes = axes[0]
    for ax, dataset in zip(axes, datasets):
        d = df[df.dataset == dataset]
        order = list(dict.fromkeys(d.variant))
        ax.bar(range(len(order)), [d[d.variant == v].miou.mean() for v in order], color="0.85")
        for seed, s in d.groupby("seed"):  # each seed's values joined across variants: its own sensitivity
            x = [order.index(v) for v in s.variant]
            ax.plot(x, s.miou, marker="o", markersize=4, linewidth=0.8, label=f"seed {seed}", zorder=3)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"{name}: {dataset}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
