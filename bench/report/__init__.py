"""`acseg-bench report`: reports/README.md and its figures, built from the pipeline's CSVs alone.

Inputs: the results table (one row per run: method, crf, seed, miou, acc, per-class IoU columns ``iou_<class>``),
the ablations table (``axis, value, seed, miou, acc``), and optionally the concepts-per-image CSVs of ACSeg's
runs. Outputs: a Markdown report (main table, one table per ablation axis, the paper's claims beside what was
measured, provenance) and seaborn PNGs. Nothing is recomputed, so the report always matches the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import tracking
from bench.ablate import axis_title
from bench.concept_study import read_generator_results
from bench.config import Config
from bench.data import get_spec, write_text_atomic
from bench.datasets import dataset_title
from bench.figures import pyplot, qualitative_grid
from bench.methods import get_method, method_title
from bench.report.concepts import generators_report_lines
from bench.runs import load_examples
from bench.stats import format_ci, format_p, format_summary, summarise, welch

__all__ = ["ReportInputs", "build_report", "run_report"]


# The paper's claims (docs/methods/acseg.md), each with the dataset it was made on: never compared across datasets.
PAPER_CLAIMS = [
    ("ACSeg mIoU", "VOC 2012 val", "47.1 +- 2.4"),
    ("ACSeg mIoU", "COCO-Stuff-27 val", "16.4 +- 0.9"),
    ("number of prototypes", "VOC 2012", "best at k=5; k=2 collapses to fore/background; k>=7 over-clusters"),
    ("speed of the concept step", "(any)", "149.2 images/s vs k-means 2.4, spectral 3.4"),
    ("concept k-NN retrieval top-1 / top-5", "VOC 2012", "ACSeg 57.8 / 61.0, k-means 45.1 / 49.1, spectral 43.0 / 47.3"),
]


@dataclass
class ReportInputs:
    results: pd.DataFrame  # every dataset's rows; the report never mixes datasets in one table or figure
    ablations: pd.DataFrame | None = None
    concepts: dict[str, pd.DataFrame] = field(default_factory=dict)  # dataset -> columns seed, image, concepts
    command: str = "dvc repro"
    config_hash: str = ""
    git_commit: str = ""
    notes: list[str] = field(default_factory=list)
    # dataset -> method -> [(image name, RGB, ground truth, matched prediction)] for the same evaluation images
    examples: dict[str, dict[str, list]] = field(default_factory=dict)
    examples_seed: int = 0
    ignore_index: dict[str, int] = field(default_factory=dict)  # dataset -> void id
    floor: str = "kmeans"  # the method every other is compared with
    generators: pd.DataFrame | None = None  # the concept-generator study (bench/generators.py), every dataset


def mean_std(values: pd.Series) -> str:
    """'m +- s' over seeds (sample std, ddof=1; a single seed has no std)."""
    return format_summary(summarise(values.dropna().tolist()))


def main_table(results: pd.DataFrame, floor: str = "kmeans") -> pd.DataFrame:
    """One dataset's methods x (mIoU, its 95 % CI, the difference from the floor with Welch's p, accuracy) over
    seeds, with and without CRF (each compared with the floor of the same CRF setting)."""
    if results.dataset.nunique() > 1:
        raise ValueError("a main table holds one dataset: call it per dataset")
    rows = []
    for (method, crf), g in results.groupby(["method", "crf"], sort=True):
        s = summarise(g.miou.tolist())
        base = results[(results.method == floor) & (results.crf == crf)].miou.tolist()
        versus = welch(g.miou.tolist(), base) if base and method != floor else None
        rows.append({"method": method_title(method), "CRF": "yes" if crf else "no", "mIoU (%)": format_summary(s),
                     "95% CI": format_ci(s),
                     "vs floor": f"{versus.difference:+.2f}" if versus else "",
                     "p (Welch)": format_p(versus.p_value) if versus else "",
                     "accuracy (%)": mean_std(g.acc), "seeds": g.seed.nunique()})
    return pd.DataFrame(rows)


STEGO_COLUMNS = {"shift_self": "shift self", "shift_knn": "shift k-NN", "shift_rand": "shift random",
                 "attract_fraction_self": "attract self", "attract_fraction_knn": "attract k-NN",
                 "attract_fraction_rand": "attract random", "feature_correlation_self": "mean F self",
                 "feature_correlation_knn": "mean F k-NN", "feature_correlation_rand": "mean F random",
                 "clusters_used": "clusters used (val)"}


def stego_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """One dataset's STEGO runs (no CRF), means over seeds: each term's shift, the fraction of sampled training
    pairs that attract (F above the shift) and their mean F, and how many clusters the readout uses on val."""
    d = results[results.method.astype(str).str.startswith("stego") & ~results.crf.astype(bool)]
    columns = [c for c in STEGO_COLUMNS if c in d]
    if d.empty or not columns:
        return None
    table = d.groupby("method")[columns].mean().round(3).rename(columns=STEGO_COLUMNS)
    table.insert(0, "mIoU (%)", [mean_std(d[d.method == m].miou) for m in table.index])
    table.index = [method_title(m) for m in table.index]
    return table.reset_index(names="method")


def axis_tables(ablations: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per sweep: each value's mean +- std, CI, and its difference from the default point (the sweep's
    reference row) with Welch's p-value; * marks p < 0.05."""
    tables = {}
    for axis, g in ablations.groupby("axis", sort=False):
        values = list(dict.fromkeys(g.value))
        # the default point: flagged by the sweep (`default`), else the first (sweeps put it first when it is not
        # one of their values)
        flagged = g[g["default"].astype(bool)].value if "default" in g else ()
        default = flagged.iloc[0] if len(flagged) else values[0]
        reference = g[g.value == default].miou.tolist()
        rows = []
        for value in values:
            v = g[g.value == value]
            s = summarise(v.miou.tolist())
            versus = welch(v.miou.tolist(), reference) if value != default else None
            mark = "*" if versus is not None and versus.significant else ""
            rows.append({axis_title(axis): value, "mIoU (%)": format_summary(s) + mark, "95% CI": format_ci(s),
                         "vs default": f"{versus.difference:+.2f}" if versus else "(default)",
                         "p (Welch)": format_p(versus.p_value) if versus else "",
                         "accuracy (%)": mean_std(v.acc), "seeds": v.seed.nunique()})
        tables[axis] = pd.DataFrame(rows)
    return tables


def _sorted_values(values: pd.Series) -> list:
    numeric = pd.to_numeric(values, errors="coerce")
    return list(values.iloc[np.argsort(numeric.to_numpy())]) if numeric.notna().all() else list(values)


# ------------------------------------------------------------------------------------------------ figures


def _axes(figsize: tuple[float, float]):
    return pyplot().subplots(figsize=figsize)


def _save(fig, ax, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    plt = pyplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure_prototypes(ablations: pd.DataFrame, path: Path) -> Path | None:
    import seaborn as sns

    g = ablations[ablations.axis == "prototypes"].copy()
    if g.empty:
        return None
    g["k"] = pd.to_numeric(g.value)
    fig, ax = _axes((5.5, 3.8))
    sns.lineplot(data=g, x="k", y="miou", errorbar="sd", marker="o", err_style="bars", ax=ax)
    ax.set_xticks(sorted(g.k.unique()))
    return _save(fig, ax, path, "ACSeg: mIoU vs number of prototypes", "number of prototypes k",
                 "mIoU (%), mean +- std over seeds")


def figure_axis_bars(ablations: pd.DataFrame, axis: str, path: Path, title: str) -> Path | None:
    import seaborn as sns

    g = ablations[ablations.axis == axis]
    if g.empty:
        return None
    fig, ax = _axes((6, 3.8))
    sns.barplot(data=g, x="value", y="miou", errorbar="sd", order=_sorted_values(g.value.drop_duplicates()),
                capsize=0.15, ax=ax)
    ax.tick_params(axis="x", labelrotation=15)
    return _save(fig, ax, path, title, axis_title(axis), "mIoU (%), mean +- std over seeds")


def figure_per_class(results: pd.DataFrame, path: Path, title: str) -> Path | None:
    import seaborn as sns

    cols = [c for c in results.columns if c.startswith("iou_") and results[c].notna().any()]
    if not cols:
        return None
    df = results.assign(name=[f"{method_title(m)}{' + CRF' if c else ''}" for m, c in
                              zip(results.method, results.crf)])
    table = df.groupby("name")[cols].mean()
    table.columns = [c[len("iou_"):] for c in cols]
    fig, ax = _axes((max(6.0, 2.5 + 0.75 * len(cols)), 1.6 + 0.5 * len(table)))
    sns.heatmap(table, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, cbar_kws={"label": "IoU (%)"},
                ax=ax)
    ax.tick_params(axis="x", labelrotation=45)
    return _save(fig, ax, path, f"Per-class IoU, {title} (mean over seeds)", "class", "")


def figure_concepts(concepts: pd.DataFrame, path: Path, title: str) -> Path | None:
    import seaborn as sns

    if concepts is None or concepts.empty:
        return None
    fig, ax = _axes((5.5, 3.8))
    sns.histplot(data=concepts, x="concepts", hue="seed", discrete=True, multiple="dodge", shrink=0.8, ax=ax)
    ax.set_xticks(sorted(concepts.concepts.unique()))
    return _save(fig, ax, path, f"Distribution of concepts per image, {title}",
                 "concepts used per image (ACSeg's adaptive count)", "images")


def figure_qualitative(examples: dict[str, list], path: Path, seed: int, ignore_index: int,
                       title: str) -> Path | None:
    """Image / ground truth / each method's matched prediction, one row per fixed evaluation image."""
    if not examples:
        return None
    methods = list(examples)
    n = min(len(rows) for rows in examples.values())
    rows = [(*examples[methods[0]][r][:3], *(examples[m][r][3] for m in methods)) for r in range(n)]
    return qualitative_grid(rows, path, f"{title}: fixed evaluation images, seed {seed}, no CRF (predictions "
                            "matched to classes)", ignore_index, tuple(method_title(m) for m in methods))


# ------------------------------------------------------------------------------------------------ markdown


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False)


def build_report(inputs: ReportInputs, out_dir: str | Path) -> Path:
    """Write ``out_dir``/README.md and ``out_dir``/figures/*.png; returns the README path."""
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    r = inputs.results
    first = r.iloc[0]
    lines = [
        "# acseg-bench report",
        "",
        "Generated by `acseg-bench report` from `results.csv`"
        + (" and `ablations.csv`" if inputs.ablations is not None else "") + ". Do not edit by hand: "
        f"`{inputs.command}` regenerates it.",
        "",
        f"- git commit: `{inputs.git_commit or 'unknown'}`; config hash: `{inputs.config_hash or 'n/a'}`",
        f"- backbone: {first.backbone}, weights: {first.weights}; feature type {first.feature_type}",
        "- every value is mean +- std over seeds (sample std) with the mean's 95 % confidence interval (Student's t); "
        "'vs floor' is the difference from DINO k-means with the same CRF setting and its Welch t-test p-value; "
        "CRF = dense CRF post-processing (the published DenseCRF2D settings)",
        *[f"- {n}" for n in inputs.notes],
        "",
    ]
    for dataset, d in r.groupby("dataset", sort=False):
        title = dataset_title(dataset)
        split = d.split.iloc[0]
        lines += [f"## {title}, {split} split ({d.resolution.iloc[0]})", "", _md(main_table(d, inputs.floor)), ""]
        per_class = figure_per_class(d, figures / f"per_class_iou_{dataset}.png", title)
        if per_class:
            lines += [f"![per-class IoU, {title}](figures/{per_class.name})", ""]
        grid = figure_qualitative(inputs.examples.get(dataset, {}), figures / f"qualitative_{dataset}.png",
                                  inputs.examples_seed, inputs.ignore_index.get(dataset, 255), title)
        if grid:
            lines += [f"![qualitative comparison, {title}](figures/{grid.name})", ""]
        stego = stego_table(d)
        if stego is not None:
            lines += [f"STEGO on {title}: its shifts, and per term the fraction of sampled training pairs that attract "
                      "(their feature correlation F above the shift) and their mean F (means over seeds; the "
                      "calibrated shifts make a fixed fraction repel, docs/findings/stego_calibration.md).", "", _md(stego), ""]
        concepts = figure_concepts(inputs.concepts.get(dataset), figures / f"concepts_per_image_{dataset}.png", title)
        if concepts:
            lines += [f"![concepts per image, {title}](figures/{concepts.name})", ""]
    if inputs.ablations is not None and not inputs.ablations.empty:
        a = inputs.ablations
        lines += [f"## Ablations ({dataset_title(a.dataset.iloc[0])} {a.split.iloc[0]})", "",
                  "ACSeg's choices, each trained for the ablations' budget, and STEGO's calibration rule. In each "
                  "table the default point (the params' own value) says (default); * marks a mean that differs "
                  "from it at p < 0.05 (Welch).",
                  ""]
        for axis, table in axis_tables(a).items():
            lines += [f"### {axis_title(axis)}", "", _md(table), ""]
        for fig in (figure_prototypes(a, figures / "prototypes.png"),
                    figure_axis_bars(a, "loss", figures / "loss_variants.png", "ACSeg: loss variants")):
            if fig:
                lines += [f"![{fig.stem}](figures/{fig.name})", ""]
    if inputs.generators is not None and not inputs.generators.empty:
        lines += generators_report_lines(inputs.generators, figures)
    lines += ["## The paper's claims and what this harness measured", "",
              "The paper's numbers are on its datasets; the numbers measured here are on the datasets named above. "
              "They are not comparable with each other, only each claim's direction is.", "",
              _md(pd.DataFrame(PAPER_CLAIMS, columns=["claim", "paper's dataset", "paper"])), ""]
    lines += _measured_claims(inputs)
    path = out / "README.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _measured_claims(inputs: ReportInputs) -> list[str]:
    r, a = inputs.results, inputs.ablations
    out = ["Measured here:", ""]
    for dataset, d in r.groupby("dataset", sort=False):
        here = f"{dataset_title(dataset)} {d.split.iloc[0]}"
        no_crf = d[~d.crf.astype(bool)]
        means = no_crf.groupby("method").miou.mean()
        for method in means.sort_values(ascending=False).index:
            out.append(f"- {method_title(method)} on {here}, no CRF: mIoU "
                       f"{mean_std(no_crf[no_crf.method == method].miou)}")
    if a is not None and not a.empty:
        here = f"{dataset_title(a.dataset.iloc[0])} {a.split.iloc[0]}"
        if not a[a.axis == "prototypes"].empty:
            g = a[a.axis == "prototypes"].groupby("value").miou.mean()
            out.append(f"- number of prototypes on {here}: best mean mIoU at k={g.idxmax()} ({g.max():.2f}) among "
                       f"k in {{{', '.join(str(v) for v in _sorted_values(pd.Series(g.index)))}}}")
        if not a[a.axis == "loss"].empty:
            g = a[a.axis == "loss"].groupby("value").miou.mean().sort_values(ascending=False)
            out.append(f"- loss variants on {here}, by mean mIoU: " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
    return out + [""]


# ------------------------------------------------------------------------------------------------ report


def run_report(cfg: Config, ablations: str | Path | None, out: str | Path) -> Path:
    """reports/README.md and figures from the results CSV, the ablations CSV (if present) and the runs' saved
    examples and segment counts (bench/report.py)."""
    results_csv = Path(cfg.run.results_csv)
    if not results_csv.is_file():
        raise FileNotFoundError(f"no results at {results_csv}: run `acseg-bench results` (or `dvc repro`) first")
    ablation_table = pd.read_csv(ablations) if ablations and Path(ablations).is_file() else None
    results = pd.read_csv(results_csv)
    seed = cfg.benchmark.seeds[0]
    base = Path(cfg.run.runs_dir)
    concepts, examples, ignore = {}, {}, {}
    for dataset in results.dataset.unique():
        files = sorted((base / dataset / "acseg").glob("seed*/segments_per_image.csv"))
        if files:
            concepts[dataset] = pd.concat([pd.read_csv(f).rename(columns={"segments": "concepts"})
                                           .assign(seed=int(f.parent.name[len("seed"):])) for f in files])
        examples[dataset] = {m: load_examples(p) for m in cfg.benchmark.methods
                             if (p := base / dataset / m / f"seed{seed}" / "examples.npz").is_file()}
        ignore[dataset] = get_spec(dataset).ignore_index
    notes = [note for m in cfg.benchmark.methods if m in set(results.method)
             and (note := get_method(m).report_note(cfg))]
    if ablation_table is not None:
        notes.append(f"every ablation point is trained for {cfg.ablations.train_steps} steps "
                     "(`ablations.train_steps`), its default point included, so an ablation table compares like with "
                     "like")
    generators = read_generator_results(cfg.generators.out_dir) if Path(cfg.generators.out_dir).is_dir() else None
    inputs = ReportInputs(results, ablation_table, concepts, command="dvc repro", config_hash=cfg.hash(),
                          git_commit=tracking.git_commit(), notes=notes, examples=examples, examples_seed=seed,
                          ignore_index=ignore, generators=generators)
    return build_report(inputs, out)
