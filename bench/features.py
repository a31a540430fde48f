"""Extract backbone features for a dataset split into the feature cache (once), and read them back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from bench import cache
from bench.config import Config, with_overrides
from bench.data import SegmentationSplit, get_spec, locate

log = logging.getLogger(__name__)


class StreamedRows:
    """One tensor of a cache entry, read a block of rows at a time (``rows[start:stop]``): memory holds one
    block, never the split. The file is opened and closed per block, so no mapping of it stays resident."""

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
class CachedFeatures:
    features: torch.Tensor | StreamedRows  # [N, h, w, d] float16
    cls_attention: torch.Tensor | StreamedRows  # [N, heads, h, w] float16
    names: list[str]
    meta: dict

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:3])


def resolve_device(requested: str) -> torch.device:
    """The requested device, or the CPU with a clear message when CUDA is not available."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("run.device=%s requested but CUDA is not available: falling back to the CPU", requested)
        return torch.device("cpu")
    return torch.device(requested)


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

    spec = get_spec(cfg.data.dataset)
    patch = get_backbone_spec(cfg.backbone.name).patch_size
    h, w = cfg.features.height, cfg.features.width
    if h % patch or w % patch:
        raise ValueError(f"invalid parameter features.height/width={h}x{w}: must be multiples of the "
                         f"patch size {patch} of {cfg.backbone.name}")
    types = [t for t in FEATURE_TYPES if t == cfg.features.type or not cache.is_valid(
        *_entry(with_overrides(cfg, features__type=t), split))]
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    dataset = SegmentationSplit(spec, root, split, size=(h, w), with_labels=False)
    device = resolve_device(cfg.run.device)
    vit, checksum = load_backbone(cfg.backbone)
    extractor = ViTFeatures(vit, cfg.features.type).to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.features.batch_size, shuffle=False, num_workers=0)
    feats: dict[str, list[torch.Tensor]] = {t: [] for t in types}
    attns = []
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for images, _, _ in tqdm(loader, desc=f"features {cfg.data.dataset}/{split}", disable=not progress,
                                 unit="batch"):
            out = extractor(images.to(device, non_blocking=True))
            for t in types:
                feats[t].append(out[t].half().cpu())
            attns.append(out["cls_attention"].half().cpu())
    cls_attention = torch.cat(attns)
    for t in types:
        entry, meta = _entry(with_overrides(cfg, features__type=t), split)
        cache.write_entry(entry, {"features": torch.cat(feats[t]), "cls_attention": cls_attention},
                          {**meta, "weights_sha256": checksum, "names": dataset.names})
    return path


def _entry(cfg: Config, split: str) -> tuple[Path, dict]:
    return cache.cache_dir(cfg, split), cache.expected_meta(cfg, split)


def streamed_features(path: Path) -> CachedFeatures:
    """A cache entry whose tensors are read a block of rows at a time (:class:`StreamedRows`)."""
    meta = cache.read_meta(path)
    file = path / "features.safetensors"
    return CachedFeatures(StreamedRows(file, "features"), StreamedRows(file, "cls_attention"), meta["names"], meta)


def load_features(cfg: Config, split: str, stream: bool = False) -> CachedFeatures:
    """Read a valid cache entry (``stream``: row blocks on demand, for evaluation, whose memory must not grow
    with the split); a missing one is an error that says which command makes it."""
    path, meta = _entry(cfg, split)
    if not cache.is_valid(path, meta):
        raise FileNotFoundError(f"no feature cache for split {split!r} at {path}: run `acseg-bench features "
                                f"--split {split}` (or `dvc repro`) first")
    if stream:
        return streamed_features(path)
    tensors, meta = cache.read_entry(path)
    return CachedFeatures(tensors["features"], tensors["cls_attention"], meta["names"], meta)
