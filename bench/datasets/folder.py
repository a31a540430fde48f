"""``folder``: bring your own labelled images, no dataset class to write.

Layout of the folder (``datasets.folder.data.local_copy`` or ``$ACSEG_FOLDER_DIR``)::

    images/<id>.jpg|.png|.bmp     one image per id, any size
    labels/<id>.png               8-bit class index per pixel, 255 = void, the size of its image
    classes.txt                   one class name per line: line i names class i
    splits/<name>.txt             optional: the ids of a split, one per line; without splits/, one split ``all``

:meth:`FolderDataset.verify` checks everything before anything is computed and names the file at fault: an image
without a label, a label without an image, a label whose size differs from its image, a class id outside
classes.txt (other than 255), an empty or missing split list, an unreadable image or label. The feature cache
verifies a dataset before extracting from it, so nothing is cached from a folder that fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.datasets.base import (DatasetError, DatasetSpec, Sample, SplitAbsent, image_size, read_id_list,
                                 register_dataset, sha256_text)

IMAGE_SUFFIXES = (".jpg", ".png", ".bmp")
VOID = 255
HOW_TO_GET = ("point datasets.folder.data.local_copy (or $ACSEG_FOLDER_DIR) at a folder with images/<id>.jpg|png|bmp, "
              "labels/<id>.png (8-bit class ids, 255 = void), classes.txt (one name per line) and optionally "
              "splits/<name>.txt (docs/datasets.md)")


@dataclass(frozen=True, kw_only=True)
class FolderDataset(DatasetSpec):
    root: Path | None = None  # the folder this spec was bound to (its classes and splits come from it)
    split_files: dict[str, str] = field(default_factory=dict)  # split -> list file under root ("" for all)

    def bind(self, root: str | Path | None) -> FolderDataset:
        if root is None:
            raise DatasetError(f"the folder dataset needs its folder. {HOW_TO_GET}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"folder dataset: {root} does not exist or is not a folder. {HOW_TO_GET}")
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise DatasetError(f"folder dataset: {classes_file} is missing (one class name per line). {HOW_TO_GET}")
        names = tuple(line.strip() for line in classes_file.read_text().splitlines() if line.strip())
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
    def _image_of(self, root: Path, image_id: str) -> str | None:
        for suffix in IMAGE_SUFFIXES:
            if (root / "images" / f"{image_id}{suffix}").is_file():
                return f"images/{image_id}{suffix}"
        return None

    def _all_ids(self, root: Path) -> list[str]:
        return sorted(p.stem for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def samples(self, root: Path, split: str) -> list[Sample]:
        self.check_split(split)
        root = Path(root)
        listed = self.split_files[split]
        if listed:
            path = root / listed
            ids = read_id_list(path, self.title, HOW_TO_GET, split)
        else:
            ids = self._all_ids(root)
        samples = []
        for image_id in ids:
            image = self._image_of(root, image_id)
            if image is None:
                where = f" (listed in {root / listed})" if listed else ""
                raise DatasetError(f"{self.title}: no image images/{image_id}.jpg|png|bmp for id {image_id!r}{where}")
            samples.append(Sample(image_id, image, f"labels/{image_id}.png"))
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
        images = {p.stem: p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in (root / "labels").iterdir() if p.suffix.lower() == ".png"}
        for image_id in sorted(images):
            if image_id not in labels:
                raise DatasetError(f"{spec.title}: image {images[image_id]} has no label (expected "
                                   f"{root / 'labels' / (image_id + '.png')})")
        for image_id in sorted(labels):
            if image_id not in images:
                raise DatasetError(f"{spec.title}: label {labels[image_id]} has no image (expected "
                                   f"{root / 'images' / image_id}.jpg|png|bmp)")
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
