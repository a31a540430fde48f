"""Extract backbone features for a dataset split into the feature cache (once), and read them back.

A split's features are every image's patch features as rows of one tensor, image after image, with each image's
patch grid beside them: images of any size and aspect have their own grid, and nothing assumes one grid per split.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from bench import cache
from bench.config import Config, with_overrides
from bench.data import SegmentationSplit, dataset_spec, locate

log = logging.getLogger(__name__)


class StreamedRows:
    """One tensor of a cache entry, read a block of rows at a time (``rows[start:stop]``): memory holds one block,
    never the split. The file is opened and closed per block, so no mapping of it stays resident."""

    def __init__(self, path: Path, name: str):
        from safetensors import safe_open

        self.path, self.name = path, name
        with safe_open(str(path), framework="pt") as f:
            self.shape = tuple(f.get_slice(name).get_shape())

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        from safetensors import safe_open

        if not isinstance(rows, slice):
            raise TypeError(f"streamed features are read by row ranges (rows[a:b]), not by {type(rows).__name__}")
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_slice(self.name)[rows]


@dataclass
class FeatureBatch:
    """Images of one patch grid: their positions in the split, features [b, h, w, d], [CLS] attention
    [b, heads, h, w] and names."""

    positions: list[int]
    features: torch.Tensor
    cls_attention: torch.Tensor
    names: list[str]


@dataclass
class CachedFeatures:
    """A split's cached features: ``rows`` [patches, d] and ``attention_rows`` [patches, heads] (the last layer's
    [CLS] attention to each patch), image after image; ``grids`` [N, 2] each image's (h, w)."""

    rows: torch.Tensor | StreamedRows
    attention_rows: torch.Tensor | StreamedRows
    grids: torch.Tensor
    names: list[str]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return self.rows.shape[-1]

    @cached_property
    def offsets(self) -> torch.Tensor:
        """[N + 1]: image i's rows are offsets[i]:offsets[i + 1]."""
        return torch.cat([torch.zeros(1, dtype=torch.long), (self.grids[:, 0] * self.grids[:, 1]).cumsum(0)])

    @cached_property
    def uniform_grid(self) -> tuple[int, int] | None:
        """The one grid every image has, or None when grids differ."""
        first = self.grids[0]
        return (int(first[0]), int(first[1])) if bool((self.grids == first).all()) else None

    def grid(self, i: int) -> tuple[int, int]:
        return int(self.grids[i, 0]), int(self.grids[i, 1])

    def take(self, indices: Sequence[int]) -> FeatureBatch:
        """Images of one grid as dense tensors (streamed rows: consecutive images only)."""
        indices = [int(i) for i in indices]
        h, w = self.grid(indices[0])
        if any(self.grid(i) != (h, w) for i in indices):
            raise ValueError("take() needs images of one grid; use groups()")
        n, b = h * w, len(indices)
        if isinstance(self.rows, StreamedRows):
            if indices != list(range(indices[0], indices[0] + b)):
                raise ValueError("streamed features are read for consecutive images only")
            span = slice(int(self.offsets[indices[0]]), int(self.offsets[indices[-1] + 1]))
            rows, attention = self.rows[span], self.attention_rows[span]
        elif self.uniform_grid is not None:  # a gather from one [N, n, d] view
            index = torch.tensor(indices)
            rows = self.rows.view(len(self), n, -1)[index]
            attention = self.attention_rows.view(len(self), n, -1)[index]
        else:
            parts = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
            rows = torch.cat([self.rows[p] for p in parts])
            attention = torch.cat([self.attention_rows[p] for p in parts])
        features = rows.reshape(b, h, w, -1)
        cls_attention = attention.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        return FeatureBatch(list(range(b)), features, cls_attention, [self.names[i] for i in indices])

    def groups(self, indices: Sequence[int]) -> list[FeatureBatch]:
        """``indices`` split by grid (in order of first appearance), each group one dense batch whose
        ``positions`` say where its images stand in ``indices``. One grid: one group, as ``take``."""
        indices = [int(i) for i in indices]
        by_grid: dict[tuple[int, int], list[int]] = {}
        for position, i in enumerate(indices):
            by_grid.setdefault(self.grid(i), []).append(position)
        out = []
        for positions in by_grid.values():
            if isinstance(self.rows, StreamedRows):  # consecutive runs of one grid
                runs = _consecutive([indices[p] for p in positions], positions)
                for run_positions, run in runs:
                    batch = self.take(run)
                    batch.positions = run_positions
                    out.append(batch)
                continue
            batch = self.take([indices[p] for p in positions])
            batch.positions = positions
            out.append(batch)
        return out

    def all_rows(self) -> torch.Tensor:
        """[patches, d] of every image (in memory)."""
        return self.rows[:] if isinstance(self.rows, StreamedRows) else self.rows


def _consecutive(indices: list[int], positions: list[int]) -> list[tuple[list[int], list[int]]]:
    runs: list[tuple[list[int], list[int]]] = []
    for p, i in zip(positions, indices):
        if runs and i == runs[-1][1][-1] + 1:
            runs[-1][0].append(p)
            runs[-1][1].append(i)
        else:
            runs.append(([p], [i]))
    return runs


def resolve_device(requested: str) -> torch.device:
    """The requested device, or the CPU with a clear message when CUDA is not available."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("run.device=%s requested but CUDA is not available: falling back to the CPU", requested)
        return torch.device("cpu")
    return torch.device(requested)


def input_size(image_hw: tuple[int, int], cfg: Config, patch: int) -> tuple[int, int]:
    """The backbone's input size for an image of ``image_hw``: features.height x width, or with data.keep_aspect a
    grid of about as many patches that keeps the image's aspect ratio (a 240x320 portrait image at 238x322 gets
    322x238)."""
    height, width = cfg.features.height, cfg.features.width
    if not cfg.data.keep_aspect:
        return height, width
    area = (height // patch) * (width // patch)
    h, w = image_hw
    return max(1, round(math.sqrt(area * h / w))) * patch, max(1, round(math.sqrt(area * w / h))) * patch


def _batches(dataset: SegmentationSplit, batch_size: int):
    """Consecutive images of one input size, at most ``batch_size`` at a time."""
    batch: list[torch.Tensor] = []
    for i in range(len(dataset)):
        image = dataset[i][0]
        if batch and (image.shape != batch[0].shape or len(batch) == batch_size):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def ensure_features(cfg: Config, split: str, progress: bool = True) -> Path:
    """The cache entry for (cfg, split): reused if valid, computed and atomically written if not.

    One forward pass yields every feature type (tokens and keys), so the pass writes every type's entry that is
    missing: an ablation over feature types costs one extraction, not one per type."""
    path, meta = _entry(cfg, split)
    if cache.is_valid(path, meta):
        log.info("feature cache hit: %s", path)
        return path
    with cache.lock(path):  # two processes asking for one entry: one computes it, the other then reads it
        if cache.is_valid(path, meta):
            return path
        return _extract(cfg, split, path, progress)


def _extract(cfg: Config, split: str, path: Path, progress: bool) -> Path:
    from acseg.features import FEATURE_TYPES, ViTFeatures
    from bench.backbones import get_backbone_spec, load_backbone

    spec = dataset_spec(cfg)
    patch = get_backbone_spec(cfg.backbone.name).patch_size
    h, w = cfg.features.height, cfg.features.width
    if h % patch or w % patch:
        raise ValueError(f"invalid parameter features.height/width={h}x{w}: must be multiples of the "
                         f"patch size {patch} of {cfg.backbone.name}")
    types = [t for t in FEATURE_TYPES if t == cfg.features.type or not cache.is_valid(
        *_entry(with_overrides(cfg, {"features.type": t}), split))]
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    spec.verify(root)  # nothing is cached from a dataset that fails its verification
    dataset = SegmentationSplit(spec, root, split, size=lambda hw: input_size(hw, cfg, patch), with_labels=False)
    device = resolve_device(cfg.run.device)
    vit, checksum = load_backbone(cfg.backbone)
    extractor = ViTFeatures(vit, cfg.features.type).to(device)
    rows: dict[str, list[torch.Tensor]] = {t: [] for t in types}
    attention, grids = [], []
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for images in tqdm(_batches(dataset, cfg.features.batch_size), desc=f"features {cfg.data.dataset}/{split}",
                           disable=not progress, unit="batch"):
            out = extractor(images.to(device, non_blocking=True))
            b, gh, gw, _ = out["features"].shape
            for t in types:
                rows[t].append(out[t].half().cpu().reshape(b * gh * gw, -1))
            attention.append(out["cls_attention"].half().cpu().permute(0, 2, 3, 1).reshape(b * gh * gw, -1))
            grids += [(gh, gw)] * b
    tensors = {"cls_attention": torch.cat(attention), "grids": torch.tensor(grids, dtype=torch.long)}
    for t in types:
        entry, meta = _entry(with_overrides(cfg, {"features.type": t}), split)
        cache.write_entry(entry, {"features": torch.cat(rows[t]), **tensors},
                          {**meta, "weights_sha256": checksum, "names": dataset.names})
    return path


def _entry(cfg: Config, split: str) -> tuple[Path, dict]:
    return cache.cache_dir(cfg, split), cache.expected_meta(cfg, split)


def read_features(path: Path, stream: bool = False) -> CachedFeatures:
    """A cache entry (``stream``: rows read a block at a time, for evaluation, whose memory must not grow with the
    split)."""
    meta = cache.read_meta(path)
    file = path / "features.safetensors"
    if stream:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            grids = f.get_tensor("grids")
        return CachedFeatures(StreamedRows(file, "features"), StreamedRows(file, "cls_attention"), grids,
                              meta["names"], meta)
    tensors, _ = cache.read_entry(path)
    return CachedFeatures(tensors["features"], tensors["cls_attention"], tensors["grids"], meta["names"], meta)


def load_features(cfg: Config, split: str, stream: bool = False) -> CachedFeatures:
    """Read a valid cache entry; a missing one is an error that says which command makes it."""
    path, meta = _entry(cfg, split)
    if not cache.is_valid(path, meta):
        raise FileNotFoundError(f"no feature cache for {cfg.data.dataset} split {split!r} at {path}: run "
                                f"`acseg-bench features --dataset {cfg.data.dataset} --split {split}` (or `dvc repro`)")
    return read_features(path, stream)
