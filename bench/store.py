"""Run folders: where a run of (dataset, method, seed) keeps its files, and a fitted model read back from its
``model.pt``. Every step that writes or reads a run goes through these paths."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import Config
from bench.methods import get_method

__all__ = ["eval_dir", "load_fitted", "run_dir"]


def run_dir(cfg: Config, method: str, seed: int) -> Path:
    return Path(cfg.run.runs_dir) / cfg.data.dataset / method / f"seed{seed}"


def eval_dir(cfg: Config, method: str, seed: int, crf: bool) -> Path:
    """Where an evaluation's outputs go: the run folder, or, CRF-refined, <runs_dir>/crf/<dataset>/<method>/seed<N>
    (one DVC output per dataset: every method and seed is refined in one pass, each image's CRF kernels built once)."""
    if crf:
        return Path(cfg.run.runs_dir) / "crf" / cfg.data.dataset / method / f"seed{seed}"
    return run_dir(cfg, method, seed)


def load_fitted(cfg: Config, method: str, seed: int, device: torch.device):
    """(model on ``device`` in eval mode, its saved facts) of a trained run."""
    m = get_method(method)
    path = run_dir(cfg, method, seed) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}: run `acseg-bench train --dataset {cfg.data.dataset} "
                                f"--method {method} --seed {seed}` (or `dvc repro`) first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = m.build(cfg, saved["facts"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved["facts"]
