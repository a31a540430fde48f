"""Cityscapes-27: the 27 classes of labelIds 7..33 (road ... bicycle), as STEGO evaluates it; NOT the usual 19
trainIds. Class id = labelId - 7; labelIds below 7 (unlabeled, ego vehicle, rectification border, out of roi,
static, dynamic, ground) and above 33 are void (255).

Sources: ``gtFine_trainvaltest.zip`` (241 MB) and ``leftImg8bit_trainvaltest.zip`` (11 GB) from
www.cityscapes-dataset.com, which needs a login: fetch cannot download them and says how to. Layout:
``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
``gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (2,975 / 500 images). There is no official
list file: a split is every image and every label under its folders, and each must have its counterpart. No
checksums are published with the archives: every member's CRC-32 is checked while unpacking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets.base import Archive, ArchiveDataset, DatasetError, Sample, SplitAbsent, register_dataset

CITYSCAPES_CLASSES = ("road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
                      "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
                      "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle",
                      "bicycle")
FIRST_LABEL_ID = 7  # labelId of "road", class 0
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True, kw_only=True)
class Cityscapes27(ArchiveDataset):
    splits: dict[str, str]  # split -> folder name under leftImg8bit/ and gtFine/

    def samples(self, root: Path, split: str) -> list[Sample]:
        self.check_split(split)
        root, folder = Path(root), self.splits[split]
        images, labels = root / "leftImg8bit" / folder, root / "gtFine" / folder
        if not images.is_dir() and not labels.is_dir():
            raise SplitAbsent(f"{self.title}: split {split!r} is absent ({images} and {labels} missing). To get it: "
                              f"{self.how_to_get}")
        city_of: dict[str, str] = {}  # image name -> city; an image or a label alone still names its pair
        for base, suffix in ((images, IMAGE_SUFFIX), (labels, LABEL_SUFFIX)):
            for path in base.glob(f"*/*{suffix}") if base.is_dir() else ():
                city_of[path.name[: -len(suffix)]] = path.parent.name
        if not city_of:
            raise DatasetError(f"{self.title}: split {split!r} has no images under {images}. To get it: "
                               f"{self.how_to_get}")
        return [Sample(n, f"leftImg8bit/{folder}/{c}/{n}{IMAGE_SUFFIX}", f"gtFine/{folder}/{c}/{n}{LABEL_SUFFIX}")
                for n, c in sorted(city_of.items())]

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        ids = np.asarray(raw, dtype=np.int64) - FIRST_LABEL_ID
        return np.where((ids < 0) | (ids >= self.n_classes), self.ignore_index, ids)

    def selector(self, archive: Archive, tmp_root: Path):
        top = "gtFine/" if archive.filename == GTFINE.filename else "leftImg8bit/"
        suffix = LABEL_SUFFIX if top == "gtFine/" else IMAGE_SUFFIX
        folders = tuple(f"{top}{f}/" for f in self.splits.values())

        def select(member: str) -> str | None:
            return member if member.startswith(folders) and member.endswith(suffix) else None

        return select


GTFINE = Archive("gtFine_trainvaltest.zip", "https://www.cityscapes-dataset.com/file-handling/?packageID=1", md5=None,
                 size="241 MB")
LEFTIMG8BIT = Archive("leftImg8bit_trainvaltest.zip", "https://www.cityscapes-dataset.com/file-handling/?packageID=3",
                      md5=None, size="11 GB")

CITYSCAPES27 = Cityscapes27(
    name="cityscapes27",
    title="Cityscapes-27",
    class_names=CITYSCAPES_CLASSES,
    ignore_index=255,
    splits={"train": "train", "val": "val"},
    archives=(GTFINE, LEFTIMG8BIT),
    official_sizes={"train": 2975, "val": 500},
    layout_roots=("", "cityscapes"),
    layout_markers=("leftImg8bit", "gtFine"),
    downloadable=False,
    how_to_get=(
        "Cityscapes needs a (free) login, so it is downloaded by hand: register at "
        "https://www.cityscapes-dataset.com/register/, then download gtFine_trainvaltest.zip (241 MB, "
        "https://www.cityscapes-dataset.com/file-handling/?packageID=1) and leftImg8bit_trainvaltest.zip (11 GB, "
        "packageID=3) from https://www.cityscapes-dataset.com/downloads/ (or with `csDownload` of the "
        "cityscapesscripts package). Then point data.local_copy (or $ACSEG_CITYSCAPES_DIR) at the folder holding the "
        "two zips (fetch checks and unpacks them) or their extracted leftImg8bit/ and gtFine/ folders"
    ),
    env_var="ACSEG_CITYSCAPES_DIR",
)

register_dataset(CITYSCAPES27)
