"""How much ACSeg's result hinges on float rounding: each seed trained and evaluated with 1 and with 2 torch
threads (the thread count changes the order of float sums, as another processor does), the rest of the params as
they are. Rows to reports/thread_sensitivity.csv, a figure per seed to reports/figures/thread_sensitivity.png.

    python pipelines/thread_sensitivity.py [--dataset D ...] [--method acseg] [-s section.field=value ...]

Run from the repository root after `dvc repro` (it reuses the feature cache; its runs go to runs_threads/, which
git ignores). About 2 minutes per seed and dataset on 2 CPU cores at the default 200 training steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    from bench.config import load_config, with_overrides
    from bench.data import atomic_path
    from bench.figures import pyplot
    from bench.runs import run_evaluate, run_train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="default: every dataset of benchmark.datasets")
    parser.add_argument("--method", default="acseg")
    parser.add_argument("-s", "--set", action="append", default=[], dest="sets")
    parser.add_argument("--out", default="reports/thread_sensitivity.csv")
    args = parser.parse_args()
    base = load_config("params.yaml", overrides=args.sets)
    rows = []
    for dataset in args.dataset or base.benchmark.datasets:
        cfg = load_config("params.yaml", dataset=dataset, overrides=args.sets)
        for seed in cfg.benchmark.seeds:
            for threads in (1, 2):
                run = with_overrides(cfg, {"run.train_threads": threads, "run.runs_dir": f"runs_threads/{threads}"})
                run_train(run, args.method, seed, progress=False)
                m = run_evaluate(run, args.method, seed, progress=False)
                rows.append({"dataset": dataset, "method": args.method, "seed": seed, "train_threads": threads,
                             "miou": round(m["miou"], 2), "acc": round(m["acc"], 2), "config_hash": m["config_hash"]})
                print(f"{dataset} {args.method} seed {seed}, {threads} thread(s): mIoU {m['miou']:.2f}", flush=True)
    df = pd.DataFrame(rows)
    with atomic_path(args.out) as tmp:
        df.to_csv(tmp, index=False)
    wide = df.pivot_table(index=["dataset", "seed"], columns="train_threads", values="miou").reset_index()
    wide["difference"] = (wide[2] - wide[1]).round(2)
    print(wide.to_string(index=False))
    plt = pyplot()
    datasets = list(dict.fromkeys(df.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        d = wide[wide.dataset == dataset]
        for _, r in d.iterrows():
            ax.plot([1, 2], [r[1], r[2]], marker="o", label=f"seed {int(r.seed)}")
        ax.set_xticks([1, 2])
        ax.set_xlabel("training threads")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"{args.method}, {dataset}: same seed, 1 vs 2 threads")
        ax.legend(fontsize=8)
    fig.tight_layout()
    figure = Path("reports/figures/thread_sensitivity.png")
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    print(f"-> {args.out}, {figure}")


if __name__ == "__main__":
    main()
