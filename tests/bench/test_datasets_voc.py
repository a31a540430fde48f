"""PASCAL VOC 2012 on fixtures in its official layout: palette labels, split lists, archive checks."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError, SegmentationSplit, fetch, fetch_record, get_spec, locate
from bench.datasets.base import md5_file
from bench.datasets.voc import VOC2012, voc_palette
from tests.bench.dataset_fixtures import make_voc, tar_folder, truncate


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path / "local")


def test_voc_palette_is_the_official_colour_map():
    palette = voc_palette()
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # void (object borders)


def test_palette_pngs_decode_to_class_ids_with_255_void(tmp_path):
    ids = np.array([[0, 1, 15, 255], [20, 255, 7, 0]], dtype=np.uint8)
    root = make_voc(tmp_path / "v", train=1, val=1)
    label_path = root / "VOCdevkit/VOC2012/SegmentationClass/2008_000000.png"
    png = Image.fromarray(ids, mode="P")
    png.putpalette(voc_palette().flatten().tolist())
    png.save(label_path)
    assert Image.open(label_path).mode == "P"  # indices with a colour palette, as VOC ships them
    split = SegmentationSplit(VOC2012, root / "VOCdevkit/VOC2012", "val")
    decoded = split.read_label("2008_000000")
    assert decoded.dtype == np.int64 and decoded.tolist() == ids.astype(np.int64).tolist()


def test_a_label_value_that_is_no_voc_class_is_named(tmp_path):
    root = make_voc(tmp_path / "v", train=1, val=1) / "VOCdevkit/VOC2012"
    Image.fromarray(np.full((4, 4), 42, dtype=np.uint8), mode="L").save(root / "SegmentationClass/2008_000000.png")
    with pytest.raises(DatasetError, match=r"2008_000000\.png.*\[42\]"):
        SegmentationSplit(VOC2012, root, "val").read_label(0)


def test_the_split_list_selects_exactly_the_listed_images(voc):
    root = voc / "VOCdevkit/VOC2012"
    assert (root / "JPEGImages/2009_000000.jpg").is_file()  # on disk, but in no list
    val = SegmentationSplit(VOC2012, root, "val", size=(32, 32))
    assert val.names == (root / "ImageSets/Segmentation/val.txt").read_text().split()
    image, label, name = val[1]
    assert image.shape == (3, 32, 32) and name == "2008_000001" and label.shape == (48, 48)


def test_local_copy_is_found_at_any_documented_depth(voc):
    for src in (voc, voc / "VOCdevkit", voc / "VOCdevkit/VOC2012"):
        root, splits = fetch(VOC2012, str(src), "unused")
        assert root == voc / "VOCdevkit/VOC2012" and splits == {"train": 6, "val": 3}
    assert locate(VOC2012, str(voc), "unused") == voc / "VOCdevkit/VOC2012"


def test_missing_files_are_named(voc):
    root = voc / "VOCdevkit/VOC2012"
    (root / "SegmentationClass/2008_000002.png").unlink()
    (root / "JPEGImages/2007_000003.jpg").unlink()
    with pytest.raises(DatasetError, match=r"split 'train' is incomplete, 1 files missing, e\.g\. JPEGImages/2007_000003\.jpg"):
        fetch(VOC2012, str(voc), "unused")
    (root / "JPEGImages/2007_000003.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"'val' is incomplete.*SegmentationClass/2008_000002\.png.*To get it"):
        fetch(VOC2012, str(voc), "unused")


def test_missing_split_list_is_absent_and_named_when_used(voc):
    root = voc / "VOCdevkit/VOC2012"
    (root / "ImageSets/Segmentation/val.txt").unlink()
    _, splits = fetch(VOC2012, str(voc), "unused")
    assert splits == {"train": 6}
    with pytest.raises(DatasetError, match=r"split 'val' is absent: its list .*ImageSets/Segmentation/val\.txt is missing"):
        SegmentationSplit(VOC2012, root, "val")


def test_fetch_record_is_free_of_paths(voc):
    root, splits = fetch(VOC2012, str(voc), "unused")
    record = fetch_record(VOC2012, splits, root)
    assert record["classes"][0] == "background" and record["ignore_index"] == 255
    assert record["official_sizes"] == {"train": 1464, "val": 1449} and set(record["split_lists_sha256"]) == {"train", "val"}
    assert str(voc) not in repr(record)


def test_archive_with_the_wrong_checksum_is_named(voc, tmp_path):
    """The official tar's published md5 guards the local copy: this fixture tar is not the real one."""
    archives = tmp_path / "downloads"
    archives.mkdir()
    tar = tar_folder(voc / "VOCdevkit", archives / "VOCtrainval_11-May-2012.tar", "VOCdevkit")
    with pytest.raises(DatasetError, match=rf"archive {tar} is truncated or corrupt: md5 .*expected the published "
                                           r"6cd6e144f989b92b3379bac3b3de84fd"):
        fetch(VOC2012, str(archives), str(tmp_path / "raw"))
    assert not (tmp_path / "raw" / "voc2012").exists()


def _with_fixture_checksum(tar):
    return dataclasses.replace(VOC2012, archives=(dataclasses.replace(VOC2012.archives[0], md5=md5_file(tar),
                                                                      url=tar.as_uri()),))


def test_local_archive_is_checked_unpacked_and_published_atomically(voc, tmp_path):
    archives = tmp_path / "downloads"
    archives.mkdir()
    tar = tar_folder(voc / "VOCdevkit", archives / "VOCtrainval_11-May-2012.tar", "VOCdevkit")
    spec = _with_fixture_checksum(tar)
    root, splits = fetch(spec, str(tar), str(tmp_path / "raw"))  # the archive itself, or its folder
    assert root == tmp_path / "raw" / "voc2012" and splits == {"train": 6, "val": 3}
    assert not (root / "Annotations").exists()  # only the segmentation layout is unpacked
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["voc2012"]
    assert locate(spec, str(archives), str(tmp_path / "raw")) == root


def test_truncated_archive_is_named_and_leaves_nothing(voc, tmp_path):
    archives = tmp_path / "downloads"
    archives.mkdir()
    tar = tar_folder(voc / "VOCdevkit", archives / "VOCtrainval_11-May-2012.tar", "VOCdevkit")
    spec = dataclasses.replace(VOC2012, archives=(dataclasses.replace(VOC2012.archives[0], md5=None),))
    truncate(tar)
    with pytest.raises(DatasetError, match=rf"archive {tar} is truncated or corrupt"):
        fetch(spec, str(archives), str(tmp_path / "raw"))
    assert list((tmp_path / "raw").iterdir()) == []  # no half-unpacked folder


def test_download_is_renamed_only_when_complete_and_verified(voc, tmp_path):
    tar = tar_folder(voc / "VOCdevkit", tmp_path / "served.tar", "VOCdevkit")
    spec = _with_fixture_checksum(tar)
    root, splits = fetch(spec, None, str(tmp_path / "raw"))
    assert splits == {"train": 6, "val": 3}
    assert sorted(p.name for p in (tmp_path / "raw" / "archives").iterdir()) == ["VOCtrainval_11-May-2012.tar"]
    # a download whose checksum does not match is removed, never renamed into place
    bad = dataclasses.replace(spec, name="voc_bad", archives=(dataclasses.replace(spec.archives[0], md5="0" * 32),))
    with pytest.raises(DatasetError, match="truncated or corrupt: md5"):
        fetch(bad, None, str(tmp_path / "raw2"))
    assert list((tmp_path / "raw2" / "archives").iterdir()) == [] and not (tmp_path / "raw2" / "voc_bad").exists()


def test_neither_layout_nor_archive_names_both(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"neither the extracted layout \(JPEGImages/.*nor the archives "
                                           r"VOCtrainval_11-May-2012\.tar\. To get it"):
        fetch(get_spec("voc2012"), str(tmp_path / "empty"), str(tmp_path / "raw"))


def test_fetch_stage_names_the_missing_split_list(voc, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app

    (voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    monkeypatch.chdir(tmp_path)
    from tests.conftest import PARAMS

    result = CliRunner().invoke(app, ["fetch", "--params", str(PARAMS), "--dataset", "voc2012",
                                      "-s", f"data.local_copy={voc}"])
    assert result.exit_code == 2
    assert "the params use split 'val', which is absent" in result.output
    assert "ImageSets/Segmentation/val.txt is missing. To get it" in " ".join(result.output.split())
