"""Stanford Background (Gould et al., ICCV 2009): 715 outdoor scenes, 8 classes, images of 51 different sizes.

Source: the authors' archive ``iccv09Data.tar.gz`` (Stanford DAGS lab), which unpacks to ``iccv09Data/`` with
``images/<id>.jpg`` and ``labels/<id>.regions.txt`` (a whitespace-separated integer matrix of the image's height x
width: 0 sky, 1 tree, 2 road, 3 grass, 4 water, 5 building, 6 mountain, 7 foreground object; negative = unknown,
decoded as void 255). Every file this benchmark uses is checked against the sha256 manifest kept in this repository
(``bench/manifests/stanford_background.sha256``), for a download and for a local copy alike; the archive's other
label files (``*.surfaces.txt``, ``*.layers.txt``) are not used.

There is no official split. This benchmark fixes one, committed as id lists (``bench/manifests/
stanford_background_{train,val}.txt``): the 715 sorted ids shuffled by :func:`fixed_split` (numpy's PCG64 seeded
with 2009), the first 572 for train and the last 143 for val (80/20). Numbers on it are comparable only with
numbers on the same split.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets.base import (Archive, DatasetError, DatasetSpec, Sample, download_archive, extract_members,
                                 read_id_list, read_sha256_manifest, register_dataset, sha256_file)

log = logging.getLogger(__name__)

MANIFESTS = Path(__file__).parents[1] / "manifests"
FOLDER = "iccv09Data"
CLASSES = ("sky", "tree", "road", "grass", "water", "building", "mountain", "foreground")
SPLIT_SEED, TRAIN_SIZE = 2009, 572


def fixed_split(ids: list[str], seed: int = SPLIT_SEED, train: int = TRAIN_SIZE) -> dict[str, list[str]]:
    """The committed split: the sorted ids shuffled by numpy's default generator seeded with ``seed``; the first
    ``train`` ids are train, the rest val (each list sorted)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [sorted(ids)[i] for i in order]
    return {"train": sorted(shuffled[:train]), "val": sorted(shuffled[train:])}


@dataclass(frozen=True, kw_only=True)
class StanfordBackground(DatasetSpec):
    splits: dict[str, str]  # split -> id list in bench/manifests
    manifest: str  # "<sha256>  iccv09Data/<path>" lines, in bench/manifests
    archive: Archive

    # ---- what a split holds
    def read_manifest(self) -> dict[str, str]:
        return read_sha256_manifest(MANIFESTS / self.manifest)

    def known_digests(self) -> dict[str, str]:
        """The manifest: verify has just checked every file of it."""
        return self.read_manifest()

    def ids(self, split: str) -> list[str]:
        self.check_split(split)
        return read_id_list(MANIFESTS / self.splits[split], self.title, self.how_to_get, split)

    def samples(self, root: Path, split: str) -> list[Sample]:
        return [Sample(i, f"{FOLDER}/images/{i}.jpg", f"{FOLDER}/labels/{i}.regions.txt") for i in self.ids(split)]

    # ---- what a label means
    def read_label(self, path: Path) -> np.ndarray:
        """The ``.regions.txt`` integer matrix [H, W]."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise DatasetError(f"cannot read label {path}: {e}") from e
        rows = [line.split() for line in text.splitlines() if line.strip()]
        if not rows or len({len(r) for r in rows}) != 1:
            raise DatasetError(f"label {path} is not an integer matrix (rows of unequal length or none)")
        try:
            return np.array(rows, dtype=np.int64)
        except ValueError as e:
            raise DatasetError(f"label {path} is not an integer matrix: {e}") from e

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Negative values (unknown) -> void (255); 0..7 stay; anything else is an error."""
        raw = np.asarray(raw, dtype=np.int64)
        out = np.where(raw < 0, self.ignore_index, raw)
        return super().decode_label(out)

    # ---- where it is, and whether it is complete
    def locate(self, local_copy: str | None, download_dir: str) -> Path:
        if local_copy:
            src = Path(local_copy).expanduser()
            root = src.parent if src.name == FOLDER else src  # the folder holding iccv09Data/, or iccv09Data itself
        else:
            root = Path(download_dir) / self.name
        if not (root / FOLDER).is_dir():
            raise DatasetError(f"{self.title} not found at {root} (expected {FOLDER}/images and {FOLDER}/labels). "
                               f"To get it: {self.how_to_get}")
        return root

    def fetch(self, local_copy: str | None, download_dir: str) -> Path:
        if local_copy:
            return self.locate(local_copy, download_dir)
        final = Path(download_dir) / self.name
        if final.is_dir():
            return final
        archive = download_archive(self.archive, Path(download_dir) / "archives", self.how_to_get, check=self._check)
        return self._unpack(archive, final)

    def _check(self, archive: Path) -> None:
        """An archive is good when it unpacks and every file of the manifest matches (no checksum is published
        for the archive itself)."""
        with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".check-") as tmp:
            self._extract(archive, Path(tmp))
            self.verify(Path(tmp))

    def _extract(self, archive: Path, dest: Path) -> None:
        wanted = set(self.read_manifest())

        def select(member: str) -> str | None:
            rel = member.removeprefix("./")
            return rel if rel in wanted else None

        extract_members(archive, dest, select)

    def _unpack(self, archive: Path, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-unpacking-"))
        try:
            self._extract(archive, tmp)
            self.verify(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def verify(self, root: Path) -> dict[str, int]:
        """Every file of the manifest present and matching its sha256; {split: images} of both splits."""
        root = Path(root)
        manifest = self.read_manifest()
        missing = [rel for rel in manifest if not (root / rel).is_file()]
        if missing:
            raise DatasetError(f"{self.title} at {root}: {len(missing)} files missing, e.g. {', '.join(missing[:5])}. "
                               f"To get it: {self.how_to_get}")
        altered = [rel for rel, digest in manifest.items() if sha256_file(root / rel) != digest]
        if altered:
            raise DatasetError(f"{self.title} at {root}: {len(altered)} files do not match their sha256 checksum, "
                               f"e.g. {', '.join(altered[:5])}. Get the files again: {self.how_to_get}")
        listed = {i for split in self.splits for i in self.ids(split)}
        unknown = [i for i in listed if f"{FOLDER}/images/{i}.jpg" not in manifest]
        if unknown:
            raise DatasetError(f"{self.title}: the split lists name images the manifest does not hold: {unknown[:5]}")
        return {split: len(self.ids(split)) for split in self.splits}

    def record(self, root: Path) -> dict:
        return {"manifest_sha256": sha256_file(MANIFESTS / self.manifest),
                "split_lists_sha256": {s: sha256_file(MANIFESTS / f) for s, f in self.splits.items()},
                "split": f"fixed: numpy PCG64 seed {SPLIT_SEED} over the sorted ids, {TRAIN_SIZE} train / rest val"}


ICCV09 = Archive("iccv09Data.tar.gz", "http://dags.stanford.edu/data/iccv09Data.tar.gz", md5=None, size="14 MB")

STANFORD_BACKGROUND = StanfordBackground(
    name="stanford_background",
    title="Stanford Background (8 classes)",
    class_names=CLASSES,
    ignore_index=255,
    splits={"train": "stanford_background_train.txt", "val": "stanford_background_val.txt"},
    manifest="stanford_background.sha256",
    archive=ICCV09,
    how_to_get=(
        f"run `acseg-bench fetch --dataset stanford_background` with internet access (downloads {ICCV09.url}, "
        f"{ICCV09.size}, every file checked against bench/manifests/stanford_background.sha256), or point "
        "datasets.stanford_background.data.local_copy (or $ACSEG_STANFORD_BACKGROUND_DIR) at a folder holding "
        f"{FOLDER}/ (images/*.jpg, labels/*.regions.txt)"
    ),
    env_var="ACSEG_STANFORD_BACKGROUND_DIR",
)

register_dataset(STANFORD_BACKGROUND)
