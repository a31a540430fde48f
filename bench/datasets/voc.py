"""PASCAL VOC 2012 segmentation: 21 classes (background included), 255 = void (object borders, difficult).

Source: the official ``VOCtrainval_11-May-2012.tar`` (2 GB, md5 6cd6e144f989b92b3379bac3b3de84fd). Layout
(``VOCdevkit/VOC2012/``): ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs whose pixel values
are the class ids), and the official split lists ``ImageSets/Segmentation/{train,val}.txt`` (1,464 / 1,449
images). A split holds exactly the ids its list names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets.base import Archive, ArchiveDataset, Sample, read_id_list, register_dataset

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def voc_palette() -> np.ndarray:
    """The VOC colour map [256, 3] (class c's colour: the bits of c spread over the RGB channels, high bit first)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for c in range(256):
        v, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        palette[c] = (r, g, b)
    return palette


@dataclass(frozen=True, kw_only=True)
class VOCSegmentation(ArchiveDataset):
    splits: dict[str, str]  # split -> list file under the root

    def samples(self, root: Path, split: str) -> list[Sample]:
        self.check_split(split)
        ids = read_id_list(Path(root) / self.splits[split], self.title, self.how_to_get, split)
        return [Sample(i, f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png") for i in ids]

    def selector(self, archive: Archive, tmp_root: Path):
        prefix = "VOCdevkit/VOC2012/"
        keep = ("JPEGImages/", "SegmentationClass/", "ImageSets/Segmentation/")

        def select(member: str) -> str | None:
            rel = member[len(prefix):] if member.startswith(prefix) else None
            return rel if rel and rel.startswith(keep) else None

        return select


VOC_TAR = Archive("VOCtrainval_11-May-2012.tar", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                  md5="6cd6e144f989b92b3379bac3b3de84fd", size="2 GB")

VOC2012 = VOCSegmentation(
    name="voc2012",
    title="PASCAL VOC 2012",
    class_names=VOC_CLASSES,
    ignore_index=255,
    splits={"train": "ImageSets/Segmentation/train.txt", "val": "ImageSets/Segmentation/val.txt"},
    archives=(VOC_TAR,),
    official_sizes={"train": 1464, "val": 1449},
    layout_roots=("", "VOC2012", "VOCdevkit/VOC2012"),
    layout_markers=("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"),
    how_to_get=(
        f"run `acseg-bench fetch -s data.dataset=voc2012` with internet access (downloads {VOC_TAR.url}, "
        f"{VOC_TAR.size}, md5-checked), or point data.local_copy (or $ACSEG_VOC_DIR) at a folder holding "
        f"{VOC_TAR.filename} or its extracted VOCdevkit/VOC2012/ (JPEGImages/, SegmentationClass/, "
        "ImageSets/Segmentation/{train,val}.txt)"
    ),
    env_var="ACSEG_VOC_DIR",
)

register_dataset(VOC2012)
