import pytest

from bench.data import DatasetError, SegmentationSplit, fetch, get_spec, read_manifest, split_files, verify
from tests.conftest import requires_shared


def test_verify_reports_present_and_absent_splits(synthetic_dataset):
    spec, root = synthetic_dataset
    assert verify(spec, root) == {"train": 3, "val": 2}


def test_wrong_checksum_names_the_file(synthetic_dataset):
    spec, root = synthetic_dataset
    (root / "val" / "v1.png").write_bytes((root / "val" / "v0.png").read_bytes())
    with pytest.raises(DatasetError, match=r"do not match their sha256.*val/v1\.png"):
        verify(spec, root)


def test_missing_file_names_the_file(synthetic_dataset):
    spec, root = synthetic_dataset
    (root / "trainannot" / "t2.png").unlink()
    with pytest.raises(DatasetError, match=r"incomplete.*trainannot/t2\.png"):
        verify(spec, root)


def test_missing_dataset_says_how_to_get_it(synthetic_dataset, tmp_path):
    spec, _ = synthetic_dataset
    with pytest.raises(DatasetError, match="does not exist. To get it"):
        fetch(spec, str(tmp_path / "nowhere"), str(tmp_path))


def test_corrupt_image_names_the_file(synthetic_dataset):
    spec, root = synthetic_dataset
    (root / "train" / "t1.png").write_bytes(b"not a png at all")
    ds = SegmentationSplit(spec, root, "train", size=(28, 28))
    assert ds[0][0].shape == (3, 28, 28)
    with pytest.raises(DatasetError, match=r"cannot read image .*t1\.png"):
        ds[1]


def test_absent_split_is_a_clear_error(synthetic_dataset):
    spec, root = synthetic_dataset
    with pytest.raises(DatasetError, match="split 'test' is absent"):
        SegmentationSplit(spec, root, "test")


def test_camvid_manifest_lists_all_three_splits():
    spec = get_spec("camvid")
    assert len(read_manifest(spec)) == 2 * (367 + 101 + 233)
    assert [len(split_files(spec, s)) for s in ("train", "val", "test")] == [367, 101, 233]


@requires_shared
def test_real_camvid_verifies_without_test_split():
    import os

    spec = get_spec("camvid")
    root, splits = fetch(spec, os.environ["ACSEG_CAMVID_DIR"], "unused")
    assert splits == {"train": 367, "val": 101}


def _archive(spec, root, tmp_path, truncate=False):
    """A .tar.gz laid out like the upstream repository archive, served by a file:// URL."""
    import dataclasses
    import tarfile

    archive = tmp_path / "upstream.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="Repo-abc/CamVid")
    if truncate:
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return dataclasses.replace(spec, url=archive.as_uri(), archive_subdir="Repo-abc/CamVid")


def test_download_unpacks_verifies_and_publishes_atomically(synthetic_dataset, tmp_path):
    spec, root = synthetic_dataset
    spec = _archive(spec, root, tmp_path)
    downloaded, splits = fetch(spec, None, str(tmp_path / "raw"))
    assert downloaded == tmp_path / "raw" / spec.name and splits == {"train": 3, "val": 2}
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [spec.name]  # no temporary leftovers


def test_truncated_download_is_reported_and_leaves_nothing(synthetic_dataset, tmp_path):
    spec, root = synthetic_dataset
    spec = _archive(spec, root, tmp_path, truncate=True)
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        fetch(spec, None, str(tmp_path / "raw"))
    assert list((tmp_path / "raw").iterdir()) == []


def test_atomic_path_publishes_only_a_completed_write(tmp_path):
    from bench.data import atomic_path, write_text_atomic

    target = tmp_path / "sub" / "out.json"
    write_text_atomic(target, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old"  # the previous complete file stands
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # and no temporary file is left
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_csv_written_atomically_reads_back_without_an_index_column(tmp_path):
    import pandas as pd

    from bench.data import write_csv_atomic

    frame = pd.DataFrame({"seed": [0, 1], "miou": [21.38, 21.44]})
    target = tmp_path / "new" / "rows.csv"  # the folder is made
    write_csv_atomic(target, frame)
    assert target.read_text().splitlines()[0] == "seed,miou"
    pd.testing.assert_frame_equal(pd.read_csv(target), frame)
    assert sorted(p.name for p in target.parent.iterdir()) == ["rows.csv"]


# ---------------------------------------------------------------------------------------------- fingerprints


def test_the_fetch_record_holds_a_fingerprint_per_present_split_taken_from_the_verified_manifest(synthetic_dataset,
                                                                                                monkeypatch):
    import json

    import bench.datasets.base as base
    from bench.data import fetch_record, split_fingerprint

    spec, root = synthetic_dataset
    root_, splits = fetch(spec, str(root), "unused", progress=False)
    monkeypatch.setattr(base, "sha256_file", lambda path: pytest.fail(f"hashed {path} again"))  # verify just did
    record = fetch_record(spec, splits, root_, progress=False)
    assert set(record["split_fingerprints"]) == {"train", "val"}
    assert split_fingerprint(record, "val") == record["split_fingerprints"]["val"]
    assert str(root) not in json.dumps(record)  # nothing machine-specific: DVC hashes the record
    with pytest.raises(DatasetError, match=r"data/synthetic\.json has no fingerprint for split 'test': run "
                                           r"`acseg-bench fetch --dataset synthetic`"):
        split_fingerprint(record, "test")
    with pytest.raises(DatasetError, match=r"data/camvid\.json has no fingerprint for split 'train'"):
        split_fingerprint({"dataset": "camvid"}, "train")  # a record from before fingerprints


def test_a_fingerprint_follows_the_content_of_its_own_split_only(synthetic_dataset, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    from tests.conftest import register_dataset

    spec, root = synthetic_dataset
    names = {"train": [f"t{i}.png" for i in range(3)], "val": ["v0.png", "v1.png"]}
    before = spec.fingerprints(root, ["train", "val"], progress=False)
    elsewhere = tmp_path / "elsewhere" / "synth"
    shutil.copytree(root, elsewhere)
    assert spec.fingerprints(elsewhere, ["train", "val"], progress=False) == before  # same content, another path

    image = np.array(Image.open(root / "val" / "v1.png"))
    image[10, 10, 0] ^= 1  # one pixel of one image
    Image.fromarray(image).save(root / "val" / "v1.png")
    spec = register_dataset("synthetic", root, names)  # the manifest of the new content
    after = spec.fingerprints(root, ["train", "val"], progress=False)
    assert after["val"] != before["val"] and after["train"] == before["train"]

    label = np.array(Image.open(root / "trainannot" / "t0.png"))
    label[0, 0] = (label[0, 0] + 1) % 11
    Image.fromarray(label).save(root / "trainannot" / "t0.png")
    spec = register_dataset("synthetic", root, names)
    assert spec.fingerprints(root, ["train"], progress=False)["train"] != after["train"]
