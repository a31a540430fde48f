"""Datasets on disk: where they come from, how they are verified, and how images and labels are read.

Every dataset is a :class:`~bench.datasets.base.DatasetSpec` in the registry of :mod:`bench.datasets` (CamVid,
VOC 2012, COCO-Stuff-27, Cityscapes-27). It is fetched once (downloaded from its official source, or taken from a
local copy) and verified: CamVid file by file against the checksum manifest kept in this repository
(``bench/manifests``), the others by their archives' published checksums and by the presence of every file their
split lists name. Splits that are absent altogether are reported as absent; a split that is present but
incomplete or altered is an error naming the files. Fetch then decodes every image and label once (a file cut
after its header passes every other check) and records one fingerprint per split (a sha256 over its samples'
contents), which the feature cache keys on. Reading decodes each dataset's labels into class ids with its void id
(:meth:`~bench.datasets.base.DatasetSpec.decode_label`).

This module keeps the harness's one entry point to all of it; the functions below dispatch to the spec.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from bench.datasets import DATASETS, DatasetError, DatasetSpec, Sample, SplitAbsent, get_spec, register_dataset
from bench.datasets.base import decode_check, md5_file, read_image, sha256_file
from bench.datasets.camvid import MANIFESTS, ManifestDataset

__all__ = ["DATASETS", "dataset_spec", "MANIFESTS", "DatasetError", "DatasetSpec", "ManifestDataset", "Sample", "SegmentationSplit",
           "SplitAbsent", "decode_check", "fetch", "fetch_record", "get_spec", "load_image", "locate", "md5_file",
           "read_manifest", "register_dataset", "sha256_file", "split_files", "split_fingerprint", "verify",
           "write_json_atomic"]


def dataset_spec(cfg) -> DatasetSpec:
    """The selected dataset's spec, bound to the copy the config points at (the folder dataset reads its classes
    and splits from it)."""
    return get_spec(cfg.data.dataset).bind(cfg.data.local_copy)


def read_manifest(spec: ManifestDataset) -> dict[str, str]:
    """relative path -> sha256 (CamVid-style datasets)."""
    return spec.read_manifest()


def split_files(spec: ManifestDataset, split: str) -> list[str]:
    """Sorted image file names of a split of a CamVid-style dataset, from its manifest."""
    return spec.split_files(split)


def verify(spec: DatasetSpec, root: Path) -> dict[str, int]:
    """{split: n_images} of every present split; raises DatasetError naming missing or altered files."""
    return spec.verify(Path(root))


def fetch(spec: DatasetSpec, local_copy: str | None, download_dir: str,
          progress: bool = True) -> tuple[Path, dict[str, int]]:
    """Locate (local copy) or download the dataset, verify it, decode every image and label of its present splits
    once (:func:`~bench.datasets.base.decode_check`), return (root, {split: n_images}). A present split with no
    image is an error: every later step would fail on it further from the cause."""
    root = spec.fetch(local_copy, download_dir)
    splits = spec.verify(root)
    empty = [s for s, n in splits.items() if n == 0]
    if empty:
        raise DatasetError(f"{spec.title} at {root}: split {empty[0]!r} holds no image. To get it: {spec.how_to_get}")
    decode_check(spec, root, splits, progress=progress)
    return root, splits


def locate(spec: DatasetSpec, local_copy: str | None, download_dir: str) -> Path:
    """Where a fetched dataset lives (no download, no re-hash; `fetch` has verified it)."""
    return spec.locate(local_copy, download_dir)


def fetch_record(spec: DatasetSpec, splits: dict[str, int], root: Path, progress: bool = True) -> dict:
    """The fetch stage's output: what was verified, free of machine-specific paths (so DVC's hash is stable), with
    ``split_fingerprints`` {split: sha256 over the split's samples' contents} of every present split
    (:meth:`~bench.datasets.base.DatasetSpec.fingerprints`; call it after :func:`fetch`, whose verify checked the
    manifest the fingerprints of CamVid-style datasets come from)."""
    return {
        "dataset": spec.name,
        "title": spec.title,
        **spec.record(Path(root)),
        "splits_present": splits,
        "splits_absent": [s for s in spec.splits if s not in splits],
        "split_fingerprints": spec.fingerprints(Path(root), splits, progress=progress),
        "classes": list(spec.class_names),
        "ignore_index": spec.ignore_index,
    }


def split_fingerprint(record: dict, split: str) -> str:
    """A split's fingerprint from a fetch record (``data/<dataset>.json``); a record written before fingerprints
    existed, or without that split, is an error saying to fetch again."""
    digest = (record.get("split_fingerprints") or {}).get(split)
    if not digest:
        name = record.get("dataset", "<dataset>")
        raise DatasetError(f"{record_path(name)} has no fingerprint for split {split!r}: run `acseg-bench fetch "
                           f"--dataset {name}`")
    return digest


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed onto ``path`` only when the block completes, so a reader
    never sees a half-written file. A block that raises leaves ``path`` as it was and removes the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | Path, frame) -> None:
    """A pandas DataFrame's rows to ``path`` as CSV (no index column), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# ---------------------------------------------------------------------------------------------- reading


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a file that cannot be decoded is an error naming it."""
    return read_image(path)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An image [3, H, W] in [0, 1] at ``size`` (bilinear, antialiased: the backbone's input)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                           antialias=True)[0]


class SegmentationSplit(torch.utils.data.Dataset):
    """(image [3, H, W] float in [0, 1] resized by ``size``, label [H0, W0] long, name).

    The split's images are the (image, label) pairs its dataset lists (:meth:`DatasetSpec.samples`); labels are
    decoded into class ids with the dataset's void id.
    """

    def __init__(self, spec: DatasetSpec, root: Path, split: str,
                 size: tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]] | None = None,
                 with_labels: bool = True):
        self.spec, self.root, self.split, self.size, self.with_labels = spec, Path(root), split, size, with_labels
        self.samples = spec.samples(self.root, split)
        self.names = [s.name for s in self.samples]
        self._index = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, i: int) -> Path:
        return self.root / self.samples[i].image

    def label_path(self, i: int) -> Path:
        return self.root / self.samples[i].label

    def read_image(self, item: int | str) -> np.ndarray:
        """RGB uint8 [H, W, 3] of an image at its own size, by index or name."""
        return load_image(self.image_path(self._index[item] if isinstance(item, str) else item))

    def read_label(self, item: int | str) -> np.ndarray:
        """Class ids [H, W] (int64, void = the dataset's ignore_index) of an image, by index or name."""
        i = self._index[item] if isinstance(item, str) else item
        path = self.label_path(i)
        try:
            return self.spec.decode_label(self.spec.read_label(path))
        except ValueError as e:
            raise DatasetError(f"label {path}: {e}") from e

    def __getitem__(self, i: int):
        image = torch.from_numpy(load_image(self.image_path(i))).permute(2, 0, 1).float() / 255
        if self.size is not None:  # a fixed size, or a function of the image's own (height, width)
            image = resize_image(image, self.size(tuple(image.shape[1:])) if callable(self.size) else self.size)
        label = torch.from_numpy(self.read_label(i)) if self.with_labels else torch.empty(0)
        return image, label, self.names[i]


# ------------------------------------------------------------------------------------------ the fetch record


def record_path(dataset: str) -> Path:
    """The fetch stage's record of what was verified, ``data/<dataset>.json`` (a DVC output per dataset)."""
    return Path("data") / f"{dataset}.json"


def recorded_fingerprint(dataset: str, split: str) -> str | None:
    """The split's fingerprint in the fetch record, None where there is no record (the library used without
    `acseg-bench fetch`); a record without it is an error saying to fetch again."""
    return split_fingerprint(read_record(dataset), split) if record_path(dataset).is_file() else None


def read_record(dataset: str) -> dict:
    """The fetch record of ``dataset``; absent or unreadable: an error saying to run fetch."""
    path = record_path(dataset)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"no fetch record {path}: run `acseg-bench fetch --dataset {dataset}` first") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read the fetch record {path} ({e}): run `acseg-bench fetch --dataset {dataset}` "
                           "again") from None
