"""Tiny datasets written by the tests in the official on-disk formats (and archives of them).

- VOC 2012: ``VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG),
  ImageSets/Segmentation/{train,val}.txt}``
- COCO-Stuff: ``images/{train,val}2017/<id>.jpg``, ``annotations/{train,val}2017/<id>.png`` (fine ids, 255 =
  unlabeled), ``curated/{train,val}2017/Coco164kFull_Stuff_Coarse_7.txt``
- Cityscapes: ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png``,
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png``

Images are small and of several sizes; every split has a few images with a spread of labels, void included.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.datasets.voc import voc_palette


def _image(rng, h, w) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _blocks(rng, h, w, values) -> np.ndarray:
    """A label map of 4 blocks, each a value drawn from ``values`` (so classes cover areas, as in real labels)."""
    out = np.empty((h, w), dtype=np.uint8)
    picks = rng.choice(values, 4)
    out[: h // 2, : w // 2], out[: h // 2, w // 2 :], out[h // 2 :, : w // 2], out[h // 2 :, w // 2 :] = picks
    return out


SIZES = [(40, 56), (48, 48), (56, 40)]  # (height, width): images of several sizes, like VOC and COCO


def make_voc(base: Path, train: int = 6, val: int = 3, extra_unlisted: int = 1, seed: int = 0) -> Path:
    """Returns the folder holding VOCdevkit/."""
    rng = np.random.default_rng(seed)
    root = base / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "Annotations"):
        (root / d).mkdir(parents=True, exist_ok=True)
    palette = voc_palette().flatten().tolist()
    ids = {"train": [f"2007_{i:06d}" for i in range(train)], "val": [f"2008_{i:06d}" for i in range(val)]}
    unlisted = [f"2009_{i:06d}" for i in range(extra_unlisted)]
    for n, image_id in enumerate(ids["train"] + ids["val"] + unlisted):
        h, w = SIZES[n % len(SIZES)]
        _image(rng, h, w).save(root / "JPEGImages" / f"{image_id}.jpg")
        label = _blocks(rng, h, w, np.arange(21))
        label[0, :] = 255  # object borders are void
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    for split, names in ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "Annotations" / "2007_000000.xml").write_text("<annotation/>")  # not part of the segmentation layout
    return base


def make_cocostuff(base: Path, train: int = 6, val: int = 3, extra_unlisted: int = 1, seed: int = 0) -> Path:
    """Returns the dataset root (images/, annotations/, curated/)."""
    rng = np.random.default_rng(seed)
    ids = {"train2017": [f"{i:012d}" for i in range(1, train + 1)],
           "val2017": [f"{i:012d}" for i in range(1001, 1001 + val)]}
    fine = np.concatenate([np.arange(182), [255]])
    for folder, names in ids.items():
        for d in ("images", "annotations", "curated"):
            (base / d / folder).mkdir(parents=True, exist_ok=True)
        unlisted = [f"{i:012d}" for i in range(9000, 9000 + extra_unlisted)]
        for n, image_id in enumerate(names + unlisted):
            h, w = SIZES[n % len(SIZES)]
            _image(rng, h, w).save(base / "images" / folder / f"{image_id}.jpg")
            Image.fromarray(_blocks(rng, h, w, fine), mode="L").save(base / "annotations" / folder / f"{image_id}.png")
        (base / "curated" / folder / "Coco164kFull_Stuff_Coarse_7.txt").write_text("\n".join(names) + "\n")
    return base


def make_cityscapes(base: Path, train: int = 6, val: int = 3, seed: int = 0) -> Path:
    """Returns the folder holding leftImg8bit/ and gtFine/ (2:1 images like Cityscapes', much smaller)."""
    rng = np.random.default_rng(seed)
    cities = {"train": ["aachen", "bochum"], "val": ["frankfurt", "lindau"]}
    for split, n_images in (("train", train), ("val", val)):
        for i in range(n_images):
            city = cities[split][i % 2]
            name = f"{city}_{i:06d}_000019"
            for top, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
                (base / top / split / city).mkdir(parents=True, exist_ok=True)
            _image(rng, 32, 64).save(base / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            Image.fromarray(_blocks(rng, 32, 64, np.arange(34)), mode="L").save(
                base / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
    return base


def tar_folder(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname=arcname)
    return archive


def zip_folder(src: Path, archive: Path, prefix: str = "") -> Path:
    """Every file under src, named relative to it (with ``prefix``), as the official zips are laid out."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(src).as_posix())
    return archive


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path
