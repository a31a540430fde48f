"""The feature cache: backbone features computed once per (dataset, split, backbone, weights, feature type,
resolution) and reused by every run that shares them.

An entry is a folder holding ``features.safetensors`` and ``meta.json``. It is written under a temporary name and
renamed into place only when complete, so an interrupted run never leaves an entry that reads as valid; an entry
whose meta does not match what is asked for is recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from bench.backbones import weights_tag
from bench.config import Config

# 2: every image's patches as rows of one [patches, d] tensor with its grid (images of any size); 1 was [N, h, w, d]
FORMAT_VERSION = 2


def weights_dir(cfg: Config, split: str) -> Path:
    """<cache_dir>/<dataset>/<split>/<backbone>/<weights>: every entry of one split and one backbone's weights.

    The folder dvc.yaml names as the features stage's output (tests/bench/test_dvc_pipeline.py keeps the two in
    step); the weights' checksum is in each entry's meta."""
    return Path(cfg.features.cache_dir) / cfg.data.dataset / split / cfg.backbone.name / cfg.backbone.weights


def cache_dir(cfg: Config, split: str) -> Path:
    """One entry: <weights_dir>/<type>-<H>x<W>[-aspect] (-aspect: data.keep_aspect, every image its own grid)."""
    f = cfg.features
    return weights_dir(cfg, split) / f"{f.type}-{f.height}x{f.width}{'-aspect' if cfg.data.keep_aspect else ''}"


def expected_meta(cfg: Config, split: str) -> dict:
    return {
        "format": FORMAT_VERSION,
        "dataset": cfg.data.dataset,
        "split": split,
        "backbone": cfg.backbone.name,
        "weights": weights_tag(cfg.backbone),
        "feature_type": cfg.features.type,
        "height": cfg.features.height,
        "width": cfg.features.width,
        "keep_aspect": cfg.data.keep_aspect,
    }


def lock(path: Path):
    """An inter-process lock for one cache entry (a ``.lock`` file beside it), held while it is computed."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.parent / f".{path.name}.lock"))


def is_valid(path: Path, meta: dict, filename: str = "features.safetensors") -> bool:
    """A complete entry written for exactly this key."""
    try:
        stored = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / filename).is_file() and all(stored.get(k) == v for k, v in meta.items())


def write_entry(path: Path, tensors: dict[str, torch.Tensor], meta: dict,
                filename: str = "features.safetensors") -> None:
    """Atomically publish a cache entry (temp folder + rename); replaces an invalid older entry."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / filename))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def read_entry(path: Path, filename: str = "features.safetensors") -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(str(path / filename)), read_meta(path)
