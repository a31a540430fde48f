"""Extract backbone features for a dataset split into the feature cache (once), and read them back.

A split's features are every image's patch features as rows of one tensor, image after image, with each image's
patch grid beside them: images of any size and aspect have their own grid, and nothing assumes one grid per split.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from acseg.features import FEATURE_TYPES, ViTFeatures
from acseg.stego import FIVE_CROPS, five_crop_boxes
from bench import cache
from bench.backbones import get_backbone_spec, load_backbone
from bench.config import Config, with_overrides
from bench.data import (DatasetError, SegmentationSplit, dataset_spec, locate, record_path, recorded_fingerprint,
                        resize_image)
from bench.datasets.base import image_size

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


def _batches(dataset: SegmentationSplit, batch_size: int, images: range | None = None):
    """Consecutive images of one input size, at most ``batch_size`` at a time (``images``: a range of the split,
    default all of it)."""
    batch: list[torch.Tensor] = []
    for i in images if images is not None else range(len(dataset)):
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
    if cache.matches(path, meta):
        try:
            cache.check(path)
            log.info("feature cache hit: %s", path)
            return path
        except cache.CacheError as e:
            log.warning("%s; extracting it again", e)
    with cache.lock(path):  # two processes asking for one entry: one computes it, the other then reads it
        if cache.is_valid(path, meta):
            return path
        return _extract(cfg, split, path, progress)


def _missing_types(cfg: Config, split: str) -> list[str]:
    """The feature types a pass writes: the configured one, and every other type whose entry is missing."""
    return [t for t in FEATURE_TYPES if t == cfg.features.type or not cache.is_valid(
        *_entry(with_overrides(cfg, {"features.type": t}), split))]


def _split_dataset(cfg: Config, split: str, verify: bool = True,
                   resized: bool = True) -> tuple[SegmentationSplit, int]:
    """The split's images at the backbone's input sizes (``resized``; else at their own, for a caller that crops
    them first), the dataset verified first, and the patch size."""
    spec = dataset_spec(cfg)
    patch = get_backbone_spec(cfg.backbone.name).patch_size
    h, w = cfg.features.height, cfg.features.width
    if h % patch or w % patch:
        raise ValueError(f"invalid parameter features.height/width={h}x{w}: must be multiples of the "
                         f"patch size {patch} of {cfg.backbone.name}")
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    if verify:
        spec.verify(root)  # nothing is cached from a dataset that fails its verification
        check_fingerprint(spec, root, split)
    size = (lambda hw: input_size(hw, cfg, patch)) if resized else None
    return SegmentationSplit(spec, root, split, size=size, with_labels=False), patch


def check_fingerprint(spec, root: Path, split: str) -> None:
    """The split's files are those the fetch record fingerprinted: an entry's identity names that fingerprint, so
    features extracted from other files (changed since fetch) would be served as the record's data."""
    recorded = recorded_fingerprint(spec.name, split)
    if recorded is None:
        return  # no record: the entries' identity is computed from these very files (bench/cache.py)
    if spec.fingerprints(root, [split])[split] != recorded:
        raise DatasetError(f"{spec.title} at {root}: the files of split {split!r} changed since `acseg-bench fetch` "
                           f"recorded them in {record_path(spec.name)}: run `acseg-bench fetch --dataset {spec.name}` "
                           "again")


def _forward(cfg: Config, dataset: SegmentationSplit, images: range, types: list[str], progress: bool,
             desc: str) -> tuple[dict[str, torch.Tensor], str]:
    """One forward pass over ``images`` of the split, batched exactly as the whole split is (see
    :func:`batch_starts`): {"<type>": rows of each type, "cls_attention", "grids"} and the weights' checksum."""
    device = resolve_device(cfg.run.device)
    vit, checksum = load_backbone(cfg.backbone)
    extractor = ViTFeatures(vit, cfg.features.type).to(device)
    rows: dict[str, list[torch.Tensor]] = {t: [] for t in types}
    attention, grids = [], []
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for images_batch in tqdm(_batches(dataset, cfg.features.batch_size, images), desc=desc, disable=not progress,
                                 unit="batch"):
            out = extractor(images_batch.to(device, non_blocking=True))
            b, gh, gw, _ = out["features"].shape
            for t in types:
                rows[t].append(out[t].half().cpu().reshape(b * gh * gw, -1))
            attention.append(out["cls_attention"].half().cpu().permute(0, 2, 3, 1).reshape(b * gh * gw, -1))
            grids += [(gh, gw)] * b
    tensors = {t: torch.cat(rows[t]) for t in types}
    tensors.update(cls_attention=torch.cat(attention), grids=torch.tensor(grids, dtype=torch.long))
    return tensors, checksum


def _extract(cfg: Config, split: str, path: Path, progress: bool) -> Path:
    types = _missing_types(cfg, split)
    dataset, _ = _split_dataset(cfg, split)
    tensors, checksum = _forward(cfg, dataset, range(len(dataset)), types, progress,
                                 f"features {cfg.data.dataset}/{split}")
    _publish(cfg, split, types, tensors, checksum, dataset.names)
    return path


def _publish(cfg: Config, split: str, types: list[str], tensors: dict[str, torch.Tensor], checksum: str,
             names: list[str]) -> None:
    """Write each type's entry (atomically): its rows as "features", beside the [CLS] attention and the grids."""
    shared = {"cls_attention": tensors["cls_attention"], "grids": tensors["grids"]}
    for t in types:
        entry, meta = _entry(with_overrides(cfg, {"features.type": t}), split)
        cache.write_entry(entry, {"features": tensors[t], **shared},
                          {**meta, "weights_sha256": checksum, "names": names})


# -------------------------------------------------------------------------------------------- five crops
#
# STEGO's optional training views (stego.five_crop_ratio): the four corners and the centre of every image of a
# split, each resized to the backbone's input size (stego.five_crop_zoom, STEGO's way) or to the same fraction of it
# (the whole image's scale), and encoded like a whole image. They are an entry of their own,
# cached under the view's name (``<split>+five_crop_<ratio>``, beside the split's folder, not inside the features
# stage's output), with only the configured feature type: 5x the split's extraction, made on first use by the
# method that needs it.


def five_crop_view(split: str, ratio: float, zoom: bool = True) -> str:
    """The cache's name for the five crops of ``split``'s images at ``ratio`` (``zoom``: resized to the input size,
    else at the whole image's scale)."""
    return f"{split}+five_crop_{ratio:g}{'' if zoom else '_image_scale'}"


class FiveCropSplit(torch.utils.data.Dataset):
    """Every image of a split as its five crops (:func:`acseg.stego.five_crop_boxes`), in order: image 0's five,
    then image 1's; each crop resized by ``size`` (a function of the crop's own height and width), named
    ``<image>#<crop>``."""

    def __init__(self, images: SegmentationSplit, ratio: float, size):
        self.images, self.ratio, self.size = images, ratio, size
        self.names = [f"{name}#{crop}" for name in images.names for crop in FIVE_CROPS]
        self._last: tuple[int, torch.Tensor] | None = None  # one decode serves an image's five consecutive crops

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, j: int):
        i, crop = divmod(j, 5)
        if self._last is None or self._last[0] != i:
            self._last = (i, self.images[i][0])
        image = self._last[1]
        top, left, h, w = five_crop_boxes(*image.shape[1:], self.ratio)[crop]
        return resize_image(image[:, top:top + h, left:left + w], self.size((h, w))), torch.empty(0), self.names[j]


def _five_crop_entry(cfg: Config, split: str, ratio: float, zoom: bool) -> tuple[Path, dict]:
    view = five_crop_view(split, ratio, zoom)
    key = {"split": split, "ratio": ratio, **({} if zoom else {"zoom": False})}
    return cache.cache_dir(cfg, view), {**cache.expected_meta(cfg, view, data_split=split), "five_crop": key}


def five_crop_input_size(crop_hw: tuple[int, int], cfg: Config, patch: int, ratio: float,
                         zoom: bool) -> tuple[int, int]:
    """The backbone's input size for a crop: the features' input size (``zoom``), or ``ratio`` of its whole image's
    input size in whole patches (the crop then keeps the whole image's scale)."""
    if zoom:
        return input_size(crop_hw, cfg, patch)
    whole = input_size((round(crop_hw[0] / ratio), round(crop_hw[1] / ratio)), cfg, patch)
    return max(patch, round(whole[0] * ratio / patch) * patch), max(patch, round(whole[1] * ratio / patch) * patch)


def five_crop_features(cfg: Config, split: str, ratio: float, zoom: bool = True,
                       progress: bool = True) -> CachedFeatures:
    """The five crops of ``split``'s images, encoded: read from the cache, extracted and atomically written first
    when missing (nothing is cached from a dataset that fails its verification)."""
    path, meta = _five_crop_entry(cfg, split, ratio, zoom)
    if not cache.is_valid(path, meta):  # missing, for other data, or corrupt: (re)made
        with cache.lock(path):
            if not cache.is_valid(path, meta):
                images, patch = _split_dataset(cfg, split, resized=False)
                crops = FiveCropSplit(images, ratio, lambda hw: five_crop_input_size(hw, cfg, patch, ratio, zoom))
                tensors, checksum = _forward(cfg, crops, range(len(crops)), [cfg.features.type], progress,
                                             f"five crops {cfg.data.dataset}/{split}")
                cache.write_entry(path, {"features": tensors[cfg.features.type], "cls_attention":
                                         tensors["cls_attention"], "grids": tensors["grids"]},
                                  {**meta, "weights_sha256": checksum, "names": crops.names})
    return read_features(path, rebuild=f"delete it and run the training again (`acseg-bench train --dataset "
                                       f"{cfg.data.dataset} ...`), which encodes the crops")


# ------------------------------------------------------------------------------------------------ shards
#
# A split's extraction cut into n shards (``acseg-bench features --shard i/n``), each a contiguous run of whole
# batches of the serial extraction, so that every image meets exactly the batch it would meet in one pass: the
# merged entry is bitwise the serial one. Each shard is published atomically as a part (every feature type, the
# [CLS] attention and the grids of its images) under <weights_dir>/.shards/; the merge (``--merge n``) checks that
# every part is there and complete, then writes the entries through the cache's own atomic writer, under the
# entry's lock, and removes the parts. A missing or failed shard: an error naming it, and no entry.


class ShardError(RuntimeError):
    """A shard cannot be made or merged (missing part, a part of another extraction): the message says which."""


def batch_starts(cfg: Config, split: str, dataset: SegmentationSplit | None = None,
                 patch: int | None = None) -> list[int]:
    """The image index where each batch of the serial extraction starts, then the number of images: batches are
    consecutive images of one input size, at most features.batch_size of them (image sizes read from headers)."""
    if dataset is None:
        dataset, patch = _split_dataset(cfg, split)
    n = len(dataset)
    if cfg.data.keep_aspect:
        sizes = [input_size(image_size(dataset.image_path(i)), cfg, patch) for i in range(n)]
    else:
        sizes = [(cfg.features.height, cfg.features.width)] * n
    starts: list[int] = []
    for i in range(n):
        if not starts or sizes[i] != sizes[i - 1] or i - starts[-1] == cfg.features.batch_size:
            starts.append(i)
    return starts + [n]


def shard_count(cfg: Config, split: str, shards: int) -> int:
    """``shards``, or the split's number of batches when it has fewer (a small split is cut in fewer shards)."""
    dataset, patch = _split_dataset(cfg, split, verify=False)
    return max(1, min(shards, len(batch_starts(cfg, split, dataset, patch)) - 1))


def shard_range(starts: list[int], shard: int, shards: int) -> range:
    """Images of shard ``shard`` (0-based) of ``shards``: a contiguous run of whole batches."""
    batches = len(starts) - 1
    if not 0 <= shard < shards:
        raise ShardError(f"shard {shard}/{shards}: the shard index runs from 0 to {shards - 1}")
    if shards > batches:
        raise ShardError(f"{shards} shards: the split has {starts[-1]} images in {batches} batches "
                         f"(features.batch_size images of one size): use at most {batches} shards")
    return range(starts[shard * batches // shards], starts[(shard + 1) * batches // shards])


def shards_dir(cfg: Config, split: str, shards: int) -> Path:
    """Where the parts of one extraction in ``shards`` shards go (beside the entries it makes)."""
    f = cfg.features
    tag = f"{f.height}x{f.width}{'-aspect' if cfg.data.keep_aspect else ''}"
    return cache.weights_dir(cfg, split) / ".shards" / f"{tag}-of-{shards}"


def part_dir(cfg: Config, split: str, shard: int, shards: int) -> Path:
    return shards_dir(cfg, split, shards) / f"part-{shard}"


def _part_key(cfg: Config, split: str, shard: int, shards: int) -> dict:
    """What a part must say of itself to belong to this extraction (its image range is checked at the merge)."""
    key = {k: v for k, v in cache.expected_meta(cfg, split).items() if k != "feature_type"}
    return {**key, "part": shard, "parts": shards, "batch_size": cfg.features.batch_size}


def extract_shard(cfg: Config, split: str, shard: int, shards: int, progress: bool = True) -> Path:
    """Compute shard ``shard`` of ``shards`` of the split and publish it as a part (reused when already there)."""
    path, key = part_dir(cfg, split, shard, shards), _part_key(cfg, split, shard, shards)
    if cache.is_valid(path, key):
        log.info("shard %d/%d already computed: %s", shard, shards, path)
        return path
    dataset, patch = _split_dataset(cfg, split)
    images = shard_range(batch_starts(cfg, split, dataset, patch), shard, shards)
    tensors, checksum = _forward(cfg, dataset, images, list(FEATURE_TYPES), progress,
                                 f"features {cfg.data.dataset}/{split} shard {shard}/{shards}")
    cache.write_entry(path, {f"features.{t}": tensors[t] for t in FEATURE_TYPES}
                      | {"cls_attention": tensors["cls_attention"], "grids": tensors["grids"]},
                      {**key, "start": images.start, "stop": images.stop, "images": len(dataset),
                       "weights_sha256": checksum, "names": dataset.names[images.start:images.stop]})
    return path


def missing_shards(cfg: Config, split: str, shards: int) -> list[int]:
    """The shards of an extraction in ``shards`` shards whose part is not (completely) there."""
    return [i for i in range(shards) if not cache.is_valid(part_dir(cfg, split, i, shards),
                                                            _part_key(cfg, split, i, shards))]


def merge_shards(cfg: Config, split: str, shards: int) -> Path:
    """Merge the ``shards`` parts into the split's cache entries (every type a part holds that is missing, and the
    configured one), published atomically under the entry's lock; then the parts are removed. Any part missing,
    incomplete or of another extraction: a ShardError naming it, and no entry is written."""
    path, meta = _entry(cfg, split)
    with cache.lock(path):
        if cache.is_valid(path, meta):
            log.info("feature cache hit: %s", path)
        else:
            _merge(cfg, split, shards)
        shutil.rmtree(shards_dir(cfg, split, shards), ignore_errors=True)
        try:
            shards_dir(cfg, split, shards).parent.rmdir()  # .shards/, once no other extraction's parts are there
        except OSError:
            pass
    return path


def _merge(cfg: Config, split: str, shards: int) -> None:
    missing = missing_shards(cfg, split, shards)
    if missing:
        raise ShardError(f"features {cfg.data.dataset}/{split}: shard(s) {', '.join(f'{i}/{shards}' for i in missing)} "
                         f"missing or incomplete under {shards_dir(cfg, split, shards)}; nothing merged (compute them "
                         f"with `acseg-bench features --split {split} --shard I/{shards}`)")
    parts = [cache.read_entry(part_dir(cfg, split, i, shards)) for i in range(shards)]
    metas = [m for _, m in parts]
    first, expected = metas[0], 0
    for i, m in enumerate(metas):
        if m["start"] != expected or m["images"] != first["images"] or m["weights_sha256"] != first["weights_sha256"]:
            raise ShardError(f"features {cfg.data.dataset}/{split}: part {i}/{shards} does not follow part {i - 1} "
                             f"(images {m['start']}:{m['stop']} of {m['images']}, weights {m['weights_sha256']}): "
                             f"nothing merged; delete {shards_dir(cfg, split, shards)} and extract again")
        expected = m["stop"]
    if expected != first["images"]:
        raise ShardError(f"features {cfg.data.dataset}/{split}: the parts cover {expected} of {first['images']} "
                         "images; nothing merged")
    types = _missing_types(cfg, split)
    tensors = {t: torch.cat([p[f"features.{t}"] for p, _ in parts]) for t in types}
    tensors.update({k: torch.cat([p[k] for p, _ in parts]) for k in ("cls_attention", "grids")})
    _publish(cfg, split, types, tensors, first["weights_sha256"], [n for m in metas for n in m["names"]])


def _entry(cfg: Config, split: str) -> tuple[Path, dict]:
    return cache.cache_dir(cfg, split), cache.expected_meta(cfg, split)


def read_features(path: Path, stream: bool = False, rebuild: str = "") -> CachedFeatures:
    """A cache entry, its file checked first (``stream``: rows read a block at a time, for evaluation, whose memory
    must not grow with the split). ``rebuild``: the command that makes it again, for the message of a corrupt
    entry."""
    if stream:
        from safetensors import safe_open

        cache.check(path, rebuild=rebuild)
        meta, file = cache.read_meta(path), path / cache.FEATURES_FILE
        with safe_open(str(file), framework="pt") as f:
            grids = f.get_tensor("grids")
        return CachedFeatures(StreamedRows(file, "features"), StreamedRows(file, "cls_attention"), grids,
                              meta["names"], meta)
    tensors, meta = cache.read_entry(path, rebuild=rebuild)
    return CachedFeatures(tensors["features"], tensors["cls_attention"], tensors["grids"], meta["names"], meta)


def load_features(cfg: Config, split: str, stream: bool = False) -> CachedFeatures:
    """Read a valid cache entry, checked against its digest; a missing one (or one made from other data) is an
    error that says which command makes it, a corrupt one (:class:`bench.cache.CacheError`) which command remakes
    it."""
    path, meta = _entry(cfg, split)
    command = f"`acseg-bench features --dataset {cfg.data.dataset} --split {split}`"
    if not cache.matches(path, meta):
        other = _other_data(path, meta)
        raise FileNotFoundError(f"no feature cache for {cfg.data.dataset} split {split!r} at {path}"
                                f"{other}: run {command} (or `dvc repro`)")
    return read_features(path, stream, rebuild=f"run {command}, which extracts it again")


def _other_data(path: Path, meta: dict) -> str:
    """', made from other data (...)' when the entry there is for this key but another data fingerprint (it does
    not match the whole key: load_features asks only then)."""
    if not cache.matches(path, {k: v for k, v in meta.items() if k != "data_fingerprint"}):
        return ""
    stored = cache.read_meta(path).get("data_fingerprint") or "none"
    return (f" (the entry there was made from other data than the fetch record's: fingerprint {stored[:12]}, the "
            f"record has {meta['data_fingerprint'][:12]})")
