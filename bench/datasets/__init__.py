"""The registry of named datasets (like timm's model names): ``data.dataset`` picks one.

| name | dataset | classes | labels |
| --- | --- | --- | --- |
| ``camvid`` | CamVid-11, SegNet split | 11 | as stored, 11 = void |
| ``stanford_background`` | Stanford Background, a fixed 572/143 split | 8 | ``.regions.txt`` matrices, negative -> void (255) |
| ``voc2012`` | PASCAL VOC 2012 segmentation | 21 (background included) | palette indices, 255 = void |
| ``cocostuff27`` | COCO-Stuff-27, IIC's curated lists | 27 | 182 fine ids -> 27 coarse, 255 = void |
| ``cityscapes27`` | Cityscapes-27 (labelIds 7..33) | 27 | labelId - 7, others void (255) |
| ``folder`` | your own images: images/, labels/, classes.txt, splits/ | classes.txt | 8-bit ids, 255 = void |

Each module holds one dataset's source, layout, label mapping and verification. This package imports no torch,
so the config can consult the registry cheaply.
"""

from __future__ import annotations

from bench.datasets.base import DatasetError, DatasetSpec, Sample, SplitAbsent
from bench.registry import Registry
from bench.datasets.camvid import CAMVID
from bench.datasets.cityscapes import CITYSCAPES27
from bench.datasets.cocostuff import COCOSTUFF27
from bench.datasets.folder import FOLDER
from bench.datasets.stanford_background import STANFORD_BACKGROUND
from bench.datasets.voc import VOC2012

DATASETS: Registry[DatasetSpec] = Registry("dataset", DatasetError, "see `acseg-bench datasets`")
for _spec in (CAMVID, STANFORD_BACKGROUND, VOC2012, COCOSTUFF27, CITYSCAPES27, FOLDER):
    DATASETS.register(_spec)
register_dataset = DATASETS.register
get_spec = DATASETS.lookup


__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "Sample", "SplitAbsent", "get_spec", "register_dataset"]
