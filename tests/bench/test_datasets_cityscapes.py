"""Cityscapes-27 on fixtures in its official layout: labelId - 7, pairs of files, the manual download."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError, SegmentationSplit, fetch, locate
from bench.datasets.cityscapes import CITYSCAPES27
from tests.bench.dataset_fixtures import make_cityscapes, truncate, zip_folder


def test_label_ids_map_to_27_classes_and_the_rest_is_void():
    raw = np.arange(0, 36)
    decoded = CITYSCAPES27.decode_label(raw)
    assert decoded[7] == 0 and decoded[33] == 26  # road, bicycle
    assert (decoded[:7] == 255).all()  # unlabeled, ego vehicle, ..., ground
    assert decoded[7:34].tolist() == list(range(27)) and (decoded[34:] == 255).all()
    assert CITYSCAPES27.class_names[0] == "road" and CITYSCAPES27.class_names[26] == "bicycle"


def test_label_png_decodes_through_the_split(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    path = root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.array([[7, 33, 0], [6, 26, 255]], dtype=np.uint8), mode="L").save(path)
    split = SegmentationSplit(CITYSCAPES27, root, "val")
    assert split.names == ["frankfurt_000000_000019", "frankfurt_000002_000019", "lindau_000001_000019"]
    assert split.read_label("frankfurt_000000_000019").tolist() == [[0, 26, 255], [255, 19, 255]]


def test_an_image_without_its_label_is_named(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    (root / "gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=r"'val' is incomplete, 1 files missing, e\.g\. "
                                           r"gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds\.png"):
        fetch(CITYSCAPES27, str(root), "unused")


def test_fetch_without_a_local_copy_explains_the_manual_download(tmp_path):
    with pytest.raises(DatasetError, match=r"cannot be downloaded without a login.*cityscapes-dataset\.com.*"
                                           r"gtFine_trainvaltest\.zip.*leftImg8bit_trainvaltest\.zip.*ACSEG_CITYSCAPES_DIR"):
        fetch(CITYSCAPES27, None, str(tmp_path / "raw"))
    assert not (tmp_path / "raw").exists()


def test_the_folder_is_taken_as_it_is(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    assert fetch(CITYSCAPES27, str(root), "unused") == (root, {"train": 6, "val": 3})
    assert locate(CITYSCAPES27, str(root), "unused") == root


def _zips(root, folder):
    folder.mkdir()
    zip_folder(root, folder / "gtFine_trainvaltest.zip", prefix="")  # holds gtFine/ (and leftImg8bit/, ignored)
    zip_folder(root / "leftImg8bit", folder / "leftImg8bit_trainvaltest.zip", prefix="leftImg8bit/")
    return folder


def test_the_two_zips_are_checked_and_unpacked(tmp_path):
    zips = _zips(make_cityscapes(tmp_path / "cs"), tmp_path / "downloads")
    root, splits = fetch(CITYSCAPES27, str(zips), str(tmp_path / "raw"))
    assert root == tmp_path / "raw" / "cityscapes27" and splits == {"train": 6, "val": 3}
    assert sorted(p.name for p in root.iterdir()) == ["gtFine", "leftImg8bit"]


def test_a_truncated_zip_is_named_and_leaves_nothing(tmp_path):
    zips = _zips(make_cityscapes(tmp_path / "cs"), tmp_path / "downloads")
    truncate(zips / "leftImg8bit_trainvaltest.zip")
    with pytest.raises(DatasetError, match=r"leftImg8bit_trainvaltest\.zip is truncated or corrupt"):
        fetch(CITYSCAPES27, str(zips), str(tmp_path / "raw"))
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_corrupt_member_fails_its_crc(tmp_path):
    zips = _zips(make_cityscapes(tmp_path / "cs"), tmp_path / "downloads")
    data = bytearray((zips / "gtFine_trainvaltest.zip").read_bytes())
    start = data.index(b"IDAT") + 8  # inside the first PNG's compressed data: the size is intact, the CRC is not
    data[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
    (zips / "gtFine_trainvaltest.zip").write_bytes(bytes(data))
    spec = dataclasses.replace(CITYSCAPES27, name="cityscapes_crc")
    with pytest.raises(DatasetError, match=r"gtFine_trainvaltest\.zip is truncated or corrupt.*CRC"):
        fetch(spec, str(zips), str(tmp_path / "raw"))
