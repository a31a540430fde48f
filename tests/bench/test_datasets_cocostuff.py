"""COCO-Stuff-27 on fixtures in its official layout: the 182 -> 27 mapping, curated lists, archives."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError, SegmentationSplit, fetch
from bench.datasets.cocostuff import COARSE_CLASSES, COCOSTUFF27, FINE_CLASSES
from tests.bench.dataset_fixtures import make_cocostuff, tar_folder, truncate, zip_folder

# The documented coarse id of every fine id 0..181 (stuffthingmaps value = COCO category id - 1): IIC's and
# STEGO's published `fine_to_coarse` table, written out here independently of the implementation's table.
THINGS = ([9] + [11] * 8 + [8] * 6 + [7] * 10 + [6] * 8 + [10] * 10 + [5] * 8 + [2] * 10 + [3] * 10 + [0] * 6
          + [1] * 6 + [4] * 8)
STUFF = [17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13,
         22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25,
         21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18,
         18, 18, 18, 26, 26, 19, 19, 24]
DOCUMENTED = THINGS + STUFF


def test_documented_table_has_182_fine_ids():
    assert len(THINGS) == 91 and len(STUFF) == 91 and len(FINE_CLASSES) == 182


@pytest.mark.parametrize("fine", range(182))
def test_every_fine_id_maps_to_its_documented_coarse_id(fine):
    decoded = COCOSTUFF27.decode_label(np.array([[fine]]))
    assert decoded.tolist() == [[DOCUMENTED[fine]]], (fine, FINE_CLASSES[fine])


def test_unlabeled_is_void_and_unknown_values_are_errors():
    assert COCOSTUFF27.decode_label(np.array([[255, 0]])).tolist() == [[255, 9]]
    with pytest.raises(ValueError, match=r"\[182, 200\] are no COCO-Stuff fine ids"):
        COCOSTUFF27.decode_label(np.array([[182, 200, 3]]))


def test_coarse_classes_follow_the_protocol_order():
    assert COCOSTUFF27.n_classes == 27 and COARSE_CLASSES[:3] == ("electronic", "appliance", "food-things")
    assert COARSE_CLASSES[9] == "person" and COARSE_CLASSES[12] == "ceiling" and COARSE_CLASSES[26] == "water"
    assert {FINE_CLASSES[i][0]: COARSE_CLASSES[DOCUMENTED[i]] for i in (0, 2, 15, 148, 156, 168)} == {
        "person": "person", "car": "vehicle", "bird": "animal", "road": "ground", "sky-other": "sky", "tree": "plant"}


def test_stuffthingmap_png_decodes_through_the_split(tmp_path):
    root = make_cocostuff(tmp_path / "coco", train=1, val=1)
    fine = np.array([[0, 148, 255], [156, 168, 91]], dtype=np.uint8)
    Image.fromarray(fine, mode="L").save(root / "annotations/val2017/000000001001.png")
    split = SegmentationSplit(COCOSTUFF27, root, "val")
    assert split.read_label("000000001001").tolist() == [[9, 21, 255], [23, 22, 17]]


def test_curated_list_selects_exactly_the_listed_images(tmp_path):
    root = make_cocostuff(tmp_path / "coco")
    assert (root / "images/val2017/000000009000.jpg").is_file()  # on disk, not curated
    listed = ["000000001003", "000000001001"]  # the list's order is kept
    (root / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt").write_text("\n".join(listed) + "\n")
    split = SegmentationSplit(COCOSTUFF27, root, "val")
    assert split.names == listed
    assert [s.image for s in split.samples] == [f"images/val2017/{i}.jpg" for i in listed]
    _, splits = fetch(COCOSTUFF27, str(root), "unused")
    assert splits == {"train": 6, "val": 2}


def test_missing_image_of_the_curated_list_is_named(tmp_path):
    root = make_cocostuff(tmp_path / "coco")
    (root / "images/train2017/000000000004.jpg").unlink()
    with pytest.raises(DatasetError, match=r"'train' is incomplete, 1 files missing, e\.g\. images/train2017/000000000004\.jpg"):
        fetch(COCOSTUFF27, str(root), "unused")


def _official_archives(root, folder):
    """The four archives laid out as published: images zips (train2017/..., val2017/...), the stuffthingmaps zip
    (train2017/..., val2017/...) and IIC's curated lists (a folder holding curated/)."""
    folder.mkdir()
    for split in ("train2017", "val2017"):
        zip_folder(root / "images" / split, folder / f"{split}.zip", prefix=f"{split}/")
    zip_folder(root / "annotations", folder / "stuffthingmaps_trainval2017.zip")
    tar_folder(root / "curated", folder / "COCOStuff164kCurated.tar.gz", "COCOStuff164kCurated/curated")
    return folder


def _unchecked():
    """This spec with the published md5s dropped (fixture archives are not the real ones)."""
    return dataclasses.replace(COCOSTUFF27, archives=tuple(dataclasses.replace(a, md5=None) for a in COCOSTUFF27.archives))


def test_archives_unpack_only_the_curated_images(tmp_path):
    archives = _official_archives(make_cocostuff(tmp_path / "coco"), tmp_path / "downloads")
    root, splits = fetch(_unchecked(), str(archives), str(tmp_path / "raw"))
    assert root == tmp_path / "raw" / "cocostuff27" and splits == {"train": 6, "val": 3}
    assert not (root / "images/val2017/000000009000.jpg").exists()  # not curated, not unpacked
    assert (root / "annotations/val2017/000000001001.png").is_file()


def test_official_checksums_guard_the_image_zips(tmp_path):
    archives = _official_archives(make_cocostuff(tmp_path / "coco"), tmp_path / "downloads")
    with pytest.raises(DatasetError, match=r"val2017\.zip is truncated or corrupt: md5 .*442b8da7639aecaf257c1dceb8ba8c80"):
        fetch(COCOSTUFF27, str(archives), str(tmp_path / "raw"))
    assert list((tmp_path / "raw").iterdir()) == []


def test_truncated_zip_without_checksum_is_named(tmp_path):
    archives = _official_archives(make_cocostuff(tmp_path / "coco"), tmp_path / "downloads")
    truncate(archives / "stuffthingmaps_trainval2017.zip")
    with pytest.raises(DatasetError, match=r"stuffthingmaps_trainval2017\.zip is truncated or corrupt"):
        fetch(_unchecked(), str(archives), str(tmp_path / "raw"))
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_missing_archive_is_named(tmp_path):
    archives = _official_archives(make_cocostuff(tmp_path / "coco"), tmp_path / "downloads")
    (archives / "train2017.zip").unlink()
    with pytest.raises(DatasetError, match=r"lacks the archive\(s\) train2017\.zip \(http://images\.cocodataset\.org"):
        fetch(_unchecked(), str(archives), str(tmp_path / "raw"))
