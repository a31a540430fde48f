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

import importlib
import pkgutil

# Every module of this package but base registers its dataset when imported: a new one is found without a list to
# edit.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
from bench.datasets.base import (DATASETS, DatasetError, DatasetSpec, Sample, SplitAbsent, dataset_title, get_spec,
                                 register_dataset)

__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "Sample", "SplitAbsent", "dataset_title", "get_spec",
           "register_dataset"]
