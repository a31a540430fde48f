"""The concept-generator study in the report: each generator beside the reference (ACSeg's ACG) per dataset, the
paper's concept claim beside what was measured, and the retrieval figure. Reads the study's CSVs only."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.datasets import dataset_title
from bench.figures import pyplot
from bench.generators import generator_title
from bench.stats import format_p, format_summary, summarise, welch

# The paper's numbers (docs/methods/acseg.md), on PASCAL VOC: concept retrieval top-1 / top-5 and images/s.
PAPER_RETRIEVAL = {"acg": (57.8, 61.0), "kmeans": (45.1, 49.1), "spectral": (43.0, 47.3)}
PAPER_SPEED = {"acg": 149.2, "kmeans": 2.4, "spectral": 3.4}


def _metric_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, heading) of the measures compared with the reference, in the table's order."""
    retrieval = sorted((c for c in df.columns if c.startswith("retrieval_top")), key=lambda c: int(c[13:]))
    return [("miou", "mIoU"), ("oracle_miou", "oracle mIoU")] + [(c, f"top-{c[13:]}") for c in retrieval]


def compare_with_reference(df: pd.DataFrame, reference: str = "acg") -> pd.DataFrame:
    """One dataset's rows -> per generator and measure: mean, std, seeds, the difference from the reference
    generator's mean and Welch's p over seeds (NaN for the reference itself or with too few seeds)."""
    if df.dataset.nunique() > 1:
        raise ValueError("a generator comparison holds one dataset: call it per dataset")
    rows = []
    for generator in dict.fromkeys(df.generator):
        g = df[df.generator == generator]
        for column, _ in _metric_columns(df):
            s = summarise(g[column].tolist())
            base = df[df.generator == reference][column].tolist()
            versus = welch(g[column].tolist(), base) if base and generator != reference else None
            rows.append({"generator": generator, "measure": column, "mean": s.mean, "std": s.std, "seeds": s.n,
                         "difference": versus.difference if versus else math.nan,
                         "p_value": versus.p_value if versus else math.nan})
    return pd.DataFrame(rows)


def generator_table(df: pd.DataFrame, reference: str = "acg") -> pd.DataFrame:
    """The report's table for one dataset: generator x (concepts per image, each measure as mean +- std with its
    difference from the reference and Welch's p, images/s, GFLOPs per image, seeds); * marks p < 0.05."""
    comparison = compare_with_reference(df, reference)
    rows = []
    for generator in dict.fromkeys(df.generator):
        g = df[df.generator == generator]
        row = {"generator": generator_title(generator), "concepts / image": f"{g.concepts_per_image.mean():.1f}"}
        for column, heading in _metric_columns(df):
            c = comparison[(comparison.generator == generator) & (comparison.measure == column)].iloc[0]
            row[f"{heading} (%)"] = format_summary(summarise(g[column].tolist()))
            if generator == reference:
                row[f"{heading} vs ACG"] = "(reference)"
            elif math.isnan(c.difference):
                row[f"{heading} vs ACG"] = "n/a"
            else:
                mark = "*" if c.p_value < 0.05 else ""
                row[f"{heading} vs ACG"] = f"{c.difference:+.2f}{mark} (p {format_p(c.p_value)})"
        row["images/s"] = f"{g.images_per_s.mean():.1f}"
        row["GFLOPs / image"] = f"{g.flops_per_image.mean() / 1e9:.3g}"
        row["seeds"] = g.seed.nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def concept_claim(df: pd.DataFrame, reference: str = "acg", measure: str = "retrieval_top1") -> str:
    """One dataset's verdict on the paper's concept claim, in plain words: does the reference's ``measure`` beat
    every per-image clustering baseline at p < 0.05 (holds), does some baseline beat it at p < 0.05 (does not
    hold), or neither (not shown)."""
    comparison = compare_with_reference(df, reference)
    here = f"{dataset_title(df.dataset.iloc[0])} {df.split.iloc[0]}"
    if reference not in set(df.generator):
        return f"On {here} the reference generator {reference!r} was not measured: no verdict on the concept claim."
    mine = comparison[(comparison.generator == reference) & (comparison.measure == measure)].iloc[0]
    others = comparison[(comparison.generator != reference) & (comparison.measure == measure)]
    if others.empty:
        return f"On {here} no per-image clustering baseline was measured: no verdict on the concept claim."
    beaten = others[(others.difference < 0) & (others.p_value < 0.05)]
    better = others[(others.difference > 0) & (others.p_value < 0.05)]
    if len(beaten) == len(others):
        verdict = "holds here"
    elif not better.empty:
        verdict = "does not hold here"
    else:
        verdict = "is not shown here (no difference significant at p < 0.05 over these seeds)"
    strongest = others.loc[others["mean"].idxmax()]
    name = measure.replace("retrieval_top", "retrieval top-")

    def versus(column: str) -> str:
        means = comparison[comparison.measure == column].set_index("generator")["mean"]
        return f"{means[reference]:.1f} for ACSeg against " + ", ".join(
            f"{means[g]:.1f} for {generator_title(g)}" for g in means.index if g != reference)

    speed = df.groupby("generator", sort=False).images_per_s.mean()
    return (f"On {here}, the paper's concept claim (ACSeg's adaptive concepts are better than per-image clustering: "
            f"on VOC, retrieval top-1 57.8 against k-means 45.1 and spectral clustering 43.0) {verdict}: ACSeg's "
            f"concepts reach {name} {mine['mean']:.1f} %, the best per-image baseline "
            f"({generator_title(strongest.generator)}) {strongest['mean']:.1f} % (ACSeg "
            f"{-strongest.difference:+.1f} points from it, Welch p {format_p(strongest.p_value)}). Through the same "
            f"classifier the mIoU is {versus('miou')}; the oracle mIoU (partition quality) {versus('oracle_miou')}. "
            f"The concept step runs at " + ", ".join(f"{v:.1f} images/s for {generator_title(g)}"
                                                     for g, v in speed.items())
            + " (the paper: 149.2 for ACSeg, 2.4 for k-means, 3.4 for spectral clustering).")


def figure_retrieval(df: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Concept retrieval top-k of every generator (bars: mean over seeds, error bars: std), one dataset."""
    import seaborn as sns  # heavy: imported when a figure is drawn

    columns = [c for c, _ in _metric_columns(df) if c.startswith("retrieval_top")]
    if df.empty or not columns:
        return None
    long = df.melt(id_vars=["generator", "seed"], value_vars=columns, var_name="k", value_name="retrieval")
    long["k"] = long.k.str.replace("retrieval_top", "top-", regex=False)
    long["generator"] = long.generator.map(generator_title)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.barplot(data=long, x="generator", y="retrieval", hue="k", errorbar="sd", capsize=0.1, ax=ax)
    ax.set_ylim(0, 100)
    ax.set_title(f"Concept retrieval, {title}")
    ax.set_xlabel("concept generator (same classifier, same region embeddings)")
    ax.set_ylabel("regions whose k-NN vote is their class (%)")
    ax.tick_params(axis="x", labelrotation=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def generators_report_lines(df: pd.DataFrame, figures: Path | None = None, reference: str = "acg") -> list[str]:
    """The report's section: per dataset (in the CSVs' order) the table, the retrieval figure (when ``figures``,
    the report's figures folder, is given; linked as figures/<name>) and the verdict in plain words."""
    if df.empty:
        return []
    lines = ["## Concept generators through one classifier (the paper's concept claim)", "",
             "Each concept generator cuts the same cached features into concepts; ACSeg's own concept classifier "
             "(k-means over the region-mean embeddings of the cluster split, the `acseg.classifier` settings) gives "
             "each concept a class. mIoU: through that classifier; oracle mIoU: every concept takes its majority "
             "true class (labels diagnose only); top-k: concept retrieval, the share of evaluation regions whose k "
             "nearest regions of other images (cosine of the region embeddings) vote for their own majority "
             "class; images/s: the concept step alone, on the same features; GFLOPs: its matrix products per image "
             "(torch's FlopCounterMode) plus ~9 n^3 per eigendecomposition. Retrieval scores regions, not pixels: "
             "few large regions of a dominant class retrieve easily, so read it beside the concepts per image and "
             "the oracle mIoU. Each difference is from ACSeg's ACG over seeds (Welch); * marks p < 0.05. The paper "
             "(VOC): retrieval top-1/top-5 ACSeg "
             f"{PAPER_RETRIEVAL['acg'][0]}/{PAPER_RETRIEVAL['acg'][1]}, k-means {PAPER_RETRIEVAL['kmeans'][0]}/"
             f"{PAPER_RETRIEVAL['kmeans'][1]}, spectral {PAPER_RETRIEVAL['spectral'][0]}/"
             f"{PAPER_RETRIEVAL['spectral'][1]}; images/s {PAPER_SPEED['acg']} / {PAPER_SPEED['kmeans']} / "
             f"{PAPER_SPEED['spectral']}.", ""]
    for dataset, d in df.groupby("dataset", sort=False):
        title = f"{dataset_title(dataset)} {d.split.iloc[0]}"
        lines += [f"### {title}", "", generator_table(d, reference).to_markdown(index=False), ""]
        if figures is not None:
            figure = figure_retrieval(d, Path(figures) / f"concept_retrieval_{dataset}.png", title)
            if figure:
                lines += [f"![concept retrieval, {title}](figures/{figure.name})", ""]
        lines += [concept_claim(d, reference), ""]
    return lines


