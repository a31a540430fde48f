"""``folder``: bring your own labelled images, no dataset class to write.

Layout of the folder (``datasets.folder.data.local_copy`` or ``$ACSEG_FOLDER_DIR``)::

    images/<id>.jpg|.jpeg|.png|.bmp   one image per id, any size (extensions in any case: X.PNG, x.Jpeg)
    labels/<id>.png                   8-bit class index per pixel, 255 = void, the size of its image
    classes.txt                       one class name per line (UTF-8): the i-th name is class i
    splits/<name>.txt                 optional: the ids of a split, one per line; without splits/, one split ``all``

:meth:`FolderDataset.verify` checks everything before anything is computed and names the file at fault: an image
without a label, a label without an image, two images (or labels) for one id, a label whose size differs from its
image, a class id outside classes.txt (other than 255), duplicate class names, an empty or missing split list, an
empty images/, an id with a comma or whitespace, an unreadable image or label. The feature cache verifies a dataset
before extracting from it, so nothing is cached from a folder that fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.datasets.base import (DatasetError, DatasetSpec, Sample, SplitAbsent, bad_id_reason, image_size,
                                 read_id_list, register_dataset, sha256_text)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # matched in any case
LABEL_SUFFIX = ".png"
VOID = 255
HOW_TO_GET = ("point datasets.folder.data.local_copy (or $ACSEG_FOLDER_DIR) at a folder with "
              "images/<id>.jpg|jpeg|png|bmp, labels/<id>.png (8-bit class ids, 255 = void), classes.txt (one name "
              "per line) and optionally splits/<name>.txt (docs/datasets.md)")


def read_class_names(path: Path) -> tuple[str, ...]:
    """The names of classes.txt, one a line, stripped, blank lines skipped, a BOM dropped (editors on Windows write
    one). A name given twice is an error: two classes could not be told apart in reports (keyed by name)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"folder dataset: {path} is not UTF-8 ({e.reason} at byte {e.start}): save it as UTF-8, "
                           "one class name per line") from e
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DatasetError(f"folder dataset: {path} names {', '.join(map(repr, twice))} more than once: give each "
                           "class one line with a unique name")
    return names


@dataclass(frozen=True, kw_only=True)
class FolderDataset(DatasetSpec):
    root: Path | None = None  # the folder this spec was bound to (its classes and splits come from it)
    split_files: dict[str, str] = field(default_factory=dict)  # split -> list file under root ("" for all)
    verify_decodes_labels = True  # verify reads every label (sizes, class ids): decode_check decodes only images

    def bind(self, root: str | Path | None) -> FolderDataset:
        if root is None:
            raise DatasetError(f"the folder dataset needs its folder. {HOW_TO_GET}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"folder dataset: {root} does not exist or is not a folder. {HOW_TO_GET}")
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise DatasetError(f"folder dataset: {classes_file} is missing (one class name per line). {HOW_TO_GET}")
        names = read_class_names(classes_file)
        if not names:
            raise DatasetError(f"folder dataset: {classes_file} names no class")
        if len(names) >= VOID:
            raise DatasetError(f"folder dataset: {classes_file} names {len(names)} classes; labels are 8-bit with "
                               f"{VOID} = void, so at most {VOID} classes")
        lists = sorted((root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
        split_files = {p.stem: f"splits/{p.name}" for p in lists} or {"all": ""}
        return replace(self, root=root, class_names=names, splits=split_files, split_files=split_files,
                       title=f"folder dataset {root.name}")

    # ---- what a split holds
    def _files(self, folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
        """id -> file for the files of ``folder`` with one of ``suffixes`` in any case (X.PNG is X's image as much
        as X.png); two files for one id are an error naming both, since either could be the one meant."""
        if not folder.is_dir():
            return {}
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in suffixes and path.is_file():
                if path.stem in found:
                    raise DatasetError(f"{self.title}: {found[path.stem]} and {path} are two {what}s for id "
                                       f"{path.stem!r}: keep one")
                found[path.stem] = path
        return found

    def _images(self, root: Path) -> dict[str, Path]:
        return self._files(root / "images", IMAGE_SUFFIXES, "image")

    def _labels(self, root: Path) -> dict[str, Path]:
        return self._files(root / "labels", (LABEL_SUFFIX,), "label")

    def _all_ids(self, root: Path, images: dict[str, Path]) -> list[str]:
        """Every image's id (the split ``all``): not empty, and each usable in CSV outputs and command lines."""
        if not images:
            raise DatasetError(f"{self.title}: {root / 'images'} holds no image (.jpg, .jpeg, .png or .bmp), so the "
                               f"split 'all' would be empty. {HOW_TO_GET}")
        for image_id, path in sorted(images.items()):
            reason = bad_id_reason(image_id)
            if reason:
                raise DatasetError(f"{self.title}: the id {image_id!r} of {path} contains {reason}, which breaks CSV "
                                   "outputs and command lines: rename the image and its label")
        return sorted(images)

    def samples(self, root: Path, split: str) -> list[Sample]:
        self.check_split(split)
        root = Path(root)
        listed = self.split_files[split]
        images, labels = self._images(root), self._labels(root)
        ids = read_id_list(root / listed, self.title, HOW_TO_GET, split) if listed else self._all_ids(root, images)
        samples = []
        for image_id in ids:
            if image_id not in images:
                where = f" (listed in {root / listed})" if listed else ""
                raise DatasetError(f"{self.title}: no image images/{image_id}.jpg|jpeg|png|bmp for id {image_id!r}"
                                   f"{where}")
            label = labels[image_id].name if image_id in labels else f"{image_id}{LABEL_SUFFIX}"
            samples.append(Sample(image_id, f"images/{images[image_id].name}", f"labels/{label}"))
        return samples

    # ---- where it is, and whether it is complete
    def locate(self, local_copy: str | None, download_dir: str) -> Path:
        return self.bind(local_copy).root

    def fetch(self, local_copy: str | None, download_dir: str) -> Path:
        return self.locate(local_copy, download_dir)

    def verify(self, root: Path) -> dict[str, int]:
        spec = self if self.root == Path(root) else self.bind(root)
        root = Path(root)
        if not (root / "images").is_dir() or not (root / "labels").is_dir():
            raise DatasetError(f"{spec.title}: {root} needs images/ and labels/. {HOW_TO_GET}")
        images, labels = spec._images(root), spec._labels(root)
        for image_id in sorted(images):
            if image_id not in labels:
                raise DatasetError(f"{spec.title}: image {images[image_id]} has no label (expected "
                                   f"{root / 'labels' / (image_id + LABEL_SUFFIX)})")
        for image_id in sorted(labels):
            if image_id not in images:
                raise DatasetError(f"{spec.title}: label {labels[image_id]} has no image (expected "
                                   f"{root / 'images' / image_id}.jpg|jpeg|png|bmp)")
        for image_id in sorted(images):
            size = image_size(images[image_id])
            raw = spec.read_label(labels[image_id])
            if raw.shape != size:
                raise DatasetError(f"{spec.title}: label {labels[image_id]} is {raw.shape[1]}x{raw.shape[0]} but its "
                                   f"image {images[image_id]} is {size[1]}x{size[0]}")
            bad = (raw != VOID) & ((raw < 0) | (raw >= spec.n_classes))
            if bad.any():
                raise DatasetError(f"{spec.title}: label {labels[image_id]} holds class id(s) "
                                   f"{sorted(set(np.unique(raw[bad]).tolist()))[:5]} outside the {spec.n_classes} "
                                   f"classes of {root / 'classes.txt'} (and not the void id {VOID})")
        present = {}
        for split in spec.splits:
            try:
                present[split] = len(spec.samples(root, split))
            except SplitAbsent as e:
                raise DatasetError(str(e)) from None
        return present

    def record(self, root: Path) -> dict:
        return {"split_lists_sha256": {s: sha256_text(sorted(x.name for x in self.samples(root, s)))
                                       for s in self.splits}}


FOLDER = FolderDataset(
    name="folder",
    title="folder dataset",
    class_names=(),
    ignore_index=VOID,
    splits={},
    how_to_get=HOW_TO_GET,
    env_var="ACSEG_FOLDER_DIR",
)

register_dataset(FOLDER)
