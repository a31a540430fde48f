"""COCO-Stuff-27: COCO 2017 images with the stuffthingmaps labels, 182 fine classes merged into 27 coarse ones.

Sources: ``train2017.zip`` and ``val2017.zip`` from images.cocodataset.org (published md5s), the COCO-Stuff
``stuffthingmaps_trainval2017.zip`` (no published checksum: every member's CRC-32 is checked while unpacking)
and IIC's curated image lists ``COCOStuff164kCurated.tar.gz`` (no published checksum). Layout, as IIC and STEGO
use it: ``images/{train,val}2017/<id>.jpg``, ``annotations/{train,val}2017/<id>.png`` (pixel value = COCO
category id - 1, i.e. fine ids 0..181, 255 = unlabeled) and ``curated/{train,val}2017/Coco164kFull_Stuff_Coarse_7.txt``
(49,629 train / 2,175 val images). Only the curated images are unpacked.

The 182 -> 27 mapping: every fine class belongs to one of COCO-Stuff's 27 supercategories (12 for things,
15 for stuff); the coarse id is the supercategory's index in :data:`COARSE_CLASSES` (the order of
docs/protocol.md, the same table as IIC's and STEGO's ``fine_to_coarse``). The 11 thing ids COCO never
annotates (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush) keep
their supercategory; they do not occur in the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.datasets.base import Archive, ArchiveDataset, DatasetError, Sample, read_id_list, register_dataset

COARSE_CLASSES = ("electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory",
                  "animal", "outdoor", "person", "sports", "vehicle", "ceiling", "floor", "food-stuff",
                  "furniture-stuff", "rawmaterial", "textile", "wall", "window", "building", "ground", "plant", "sky",
                  "solid", "structural", "water")

# Fine id (stuffthingmaps value = COCO category id - 1) -> (name, supercategory), in id order 0..181.
_THINGS = [
    ("person", ["person"]),
    ("vehicle", ["bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"]),
    ("outdoor", ["traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench"]),
    ("animal", ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"]),
    ("accessory", ["hat", "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase"]),
    ("sports", ["frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
                "surfboard", "tennis racket"]),
    ("kitchen", ["bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl"]),
    ("food-things", ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
                     "cake"]),
    ("furniture-things", ["chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
                          "toilet", "door"]),
    ("electronic", ["tv", "laptop", "mouse", "remote", "keyboard", "cell phone"]),
    ("appliance", ["microwave", "oven", "toaster", "sink", "refrigerator", "blender"]),
    ("indoor", ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush"]),
]
_STUFF = [  # ids 91..181, alphabetical as in COCO-Stuff's labels.txt
    ("banner", "textile"), ("blanket", "textile"), ("branch", "plant"), ("bridge", "building"),
    ("building-other", "building"), ("bush", "plant"), ("cabinet", "furniture-stuff"), ("cage", "structural"),
    ("cardboard", "rawmaterial"), ("carpet", "floor"), ("ceiling-other", "ceiling"), ("ceiling-tile", "ceiling"),
    ("cloth", "textile"), ("clothes", "textile"), ("clouds", "sky"), ("counter", "furniture-stuff"),
    ("cupboard", "furniture-stuff"), ("curtain", "textile"), ("desk-stuff", "furniture-stuff"), ("dirt", "ground"),
    ("door-stuff", "furniture-stuff"), ("fence", "structural"), ("floor-marble", "floor"), ("floor-other", "floor"),
    ("floor-stone", "floor"), ("floor-tile", "floor"), ("floor-wood", "floor"), ("flower", "plant"), ("fog", "water"),
    ("food-other", "food-stuff"), ("fruit", "food-stuff"), ("furniture-other", "furniture-stuff"), ("grass", "plant"),
    ("gravel", "ground"), ("ground-other", "ground"), ("hill", "solid"), ("house", "building"), ("leaves", "plant"),
    ("light", "furniture-stuff"), ("mat", "textile"), ("metal", "rawmaterial"), ("mirror-stuff", "furniture-stuff"),
    ("moss", "plant"), ("mountain", "solid"), ("mud", "ground"), ("napkin", "textile"), ("net", "structural"),
    ("paper", "rawmaterial"), ("pavement", "ground"), ("pillow", "textile"), ("plant-other", "plant"),
    ("plastic", "rawmaterial"), ("platform", "ground"), ("playingfield", "ground"), ("railing", "structural"),
    ("railroad", "ground"), ("river", "water"), ("road", "ground"), ("rock", "solid"), ("roof", "building"),
    ("rug", "textile"), ("salad", "food-stuff"), ("sand", "ground"), ("sea", "water"), ("shelf", "furniture-stuff"),
    ("sky-other", "sky"), ("skyscraper", "building"), ("snow", "ground"), ("solid-other", "solid"),
    ("stairs", "furniture-stuff"), ("stone", "solid"), ("straw", "plant"), ("structural-other", "structural"),
    ("table", "furniture-stuff"), ("tent", "building"), ("textile-other", "textile"), ("towel", "textile"),
    ("tree", "plant"), ("vegetable", "food-stuff"), ("wall-brick", "wall"), ("wall-concrete", "wall"),
    ("wall-other", "wall"), ("wall-panel", "wall"), ("wall-stone", "wall"), ("wall-tile", "wall"), ("wall-wood", "wall"),
    ("water-other", "water"), ("waterdrops", "water"), ("window-blind", "window"), ("window-other", "window"),
    ("wood", "solid"),
]
FINE_CLASSES: tuple[tuple[str, str], ...] = tuple(
    [(name, group) for group, names in _THINGS for name in names] + _STUFF)
FINE_VOID = 255  # "unlabeled" in the stuffthingmaps


def fine_to_coarse_table(void: int = 255) -> np.ndarray:
    """Lookup [256]: fine id -> coarse id; 255 (unlabeled) and ids no fine class has -> ``void`` (see
    :meth:`COCOStuff27.decode_label`, which rejects the latter)."""
    table = np.full(256, void, dtype=np.int64)
    for fine, (_, group) in enumerate(FINE_CLASSES):
        table[fine] = COARSE_CLASSES.index(group)
    return table


@dataclass(frozen=True, kw_only=True)
class COCOStuff27(ArchiveDataset):
    splits: dict[str, str]  # split -> COCO folder (train2017 / val2017)
    list_name: str = "Coco164kFull_Stuff_Coarse_7.txt"

    def list_path(self, root: Path, split: str) -> Path:
        return Path(root) / "curated" / self.splits[split] / self.list_name

    def samples(self, root: Path, split: str) -> list[Sample]:
        self.check_split(split)
        folder = self.splits[split]
        ids = read_id_list(self.list_path(root, split), self.title, self.how_to_get, split)
        return [Sample(i, f"images/{folder}/{i}.jpg", f"annotations/{folder}/{i}.png") for i in ids]

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        known = (raw == FINE_VOID) | ((raw >= 0) & (raw < len(FINE_CLASSES)))
        if not known.all():
            raise ValueError(f"values {sorted(set(np.unique(raw[~known]).tolist()))[:10]} are no COCO-Stuff fine ids "
                             "(0..181, 255 unlabeled): is this a stuffthingmaps PNG?")
        return _TABLE[raw]

    def selector(self, archive: Archive, tmp_root: Path):
        if archive.filename == CURATED.filename:
            def select_list(member: str) -> str | None:
                parts = member.split("/")
                if "curated" not in parts:
                    return None
                rel = "/".join(parts[len(parts) - parts[::-1].index("curated") - 1:])
                return rel if rel.endswith(".txt") else None

            return select_list
        wanted = {}
        for split, folder in self.splits.items():
            path = self.list_path(tmp_root, split)
            if not path.is_file():
                raise DatasetError(f"{self.title}: the curated lists archive holds no {path.relative_to(tmp_root)}. "
                                   f"To get it: {self.how_to_get}")
            wanted[folder] = set(read_id_list(path, self.title, self.how_to_get, split))
        into, suffix = ("annotations", ".png") if archive.filename == STUFFTHINGMAPS.filename else ("images", ".jpg")

        def select(member: str) -> str | None:
            parts = member.split("/")
            if len(parts) < 2 or not parts[-1].endswith(suffix):
                return None
            folder, stem = parts[-2], parts[-1][: -len(suffix)]
            return f"{into}/{folder}/{parts[-1]}" if stem in wanted.get(folder, ()) else None

        return select


_TABLE = fine_to_coarse_table()

CURATED = Archive("COCOStuff164kCurated.tar.gz", "https://www.robots.ox.ac.uk/~xuji/datasets/COCOStuff164kCurated.tar.gz",
                  md5=None, size="small")
VAL_IMAGES = Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                     md5="442b8da7639aecaf257c1dceb8ba8c80", size="1 GB")
TRAIN_IMAGES = Archive("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                       md5="cced6f7f71b7629ddf16f17bbcfab6b2", size="18 GB")
STUFFTHINGMAPS = Archive("stuffthingmaps_trainval2017.zip",
                         "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
                         md5=None, size="659 MB")

COCOSTUFF27 = COCOStuff27(
    name="cocostuff27",
    title="COCO-Stuff-27 (IIC curated)",
    class_names=COARSE_CLASSES,
    ignore_index=255,
    splits={"train": "train2017", "val": "val2017"},
    archives=(CURATED, VAL_IMAGES, TRAIN_IMAGES, STUFFTHINGMAPS),  # the lists first: they say what to unpack
    official_sizes={"train": 49629, "val": 2175},
    layout_roots=("", "cocostuff"),
    layout_markers=("curated", "images", "annotations"),
    how_to_get=(
        "run `acseg-bench fetch -s data.dataset=cocostuff27` with internet access (downloads "
        + ", ".join(f"{a.url} ({a.size})" for a in (CURATED, VAL_IMAGES, TRAIN_IMAGES, STUFFTHINGMAPS))
        + "), or point data.local_copy (or $ACSEG_COCOSTUFF_DIR) at a folder holding those four archives, or the "
        "extracted layout: images/{train,val}2017/, annotations/{train,val}2017/ (stuffthingmaps) and "
        "curated/{train,val}2017/Coco164kFull_Stuff_Coarse_7.txt (as IIC and STEGO use it)"
    ),
    env_var="ACSEG_COCOSTUFF_DIR",
)

register_dataset(COCOSTUFF27)
