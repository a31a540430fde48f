"""Figures logged with runs (matplotlib, Agg, PNG): loss curves and qualitative segmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# CamVid's customary colours; class ids beyond the palette cycle, void is black.
PALETTE = np.array([
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [230, 25, 75], [60, 180, 75],
    [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
    [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200],
    [128, 0, 0], [170, 255, 195],
], dtype=np.uint8)


def colorize(ids: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Class/cluster ids [H, W] -> RGB uint8; negative ids and ignore_index are black."""
    ids = np.asarray(ids)
    rgb = PALETTE[np.mod(ids, len(PALETTE))]
    void = ids < 0
    if ignore_index is not None:
        void |= ids == ignore_index
    rgb[void] = 0
    return rgb


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(steps: list[int], loss: list[float], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def qualitative_grid(rows: list[tuple], path: Path, title: str, ignore_index: int,
                     prediction_titles: tuple[str, ...] = ("prediction (matched)",)) -> Path:
    """rows of (name, image RGB, ground truth ids, one prediction (ids mapped to classes) per title)."""
    plt = pyplot()
    columns = 2 + len(prediction_titles)
    fig, axes = plt.subplots(len(rows), columns, figsize=(3 * columns, 2.3 * len(rows)), squeeze=False)
    for r, (name, image, truth, *predictions) in enumerate(rows):
        panels = [(image, name), (colorize(truth, ignore_index), "ground truth")]
        panels += [(colorize(pred), t) for pred, t in zip(predictions, prediction_titles)]
        for c, (panel, label) in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].set_title(label, fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
