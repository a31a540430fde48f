"""Stanford Background: labels decode from .regions.txt (negatives void), the committed split is the documented
fixed one, the real copy verifies file by file, and a corrupted download is rejected leaving nothing behind."""

import dataclasses
import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError, SegmentationSplit, fetch
from bench.datasets.stanford_background import MANIFESTS, STANFORD_BACKGROUND, fixed_split

SHARED = os.environ.get("ACSEG_STANFORD_BACKGROUND_DIR")


def test_regions_txt_decodes_with_negatives_as_void(tmp_path):
    path = tmp_path / "x.regions.txt"
    path.write_text("0 1 -1\n7 -3 2\n")
    raw = STANFORD_BACKGROUND.read_label(path)
    assert raw.tolist() == [[0, 1, -1], [7, -3, 2]]
    assert STANFORD_BACKGROUND.decode_label(raw).tolist() == [[0, 1, 255], [7, 255, 2]]
    path.write_text("0 1\n2\n")
    with pytest.raises(DatasetError, match=r"label .*x\.regions\.txt is not an integer matrix"):
        STANFORD_BACKGROUND.read_label(path)
    with pytest.raises(ValueError, match=r"\[9\] are neither one of the 8 classes"):
        STANFORD_BACKGROUND.decode_label(np.array([[9, 0]]))


def test_the_committed_split_is_the_documented_fixed_split():
    manifest = STANFORD_BACKGROUND.read_manifest()
    ids = sorted(Path(rel).name[: -len(".jpg")] for rel in manifest if rel.startswith("iccv09Data/images/"))
    assert len(ids) == 715
    train, val = STANFORD_BACKGROUND.ids("train"), STANFORD_BACKGROUND.ids("val")
    assert (len(train), len(val)) == (572, 143) and not set(train) & set(val) and sorted(train + val) == ids
    assert {"train": train, "val": val} == fixed_split(ids)
    assert (MANIFESTS / "stanford_background_train.txt").read_text().splitlines() == train


@pytest.mark.skipif(not SHARED, reason="ACSEG_STANFORD_BACKGROUND_DIR not set")
def test_the_real_copy_verifies_and_reads_at_each_images_own_size(tmp_path):
    root, splits = fetch(STANFORD_BACKGROUND, SHARED, str(tmp_path))
    assert splits == {"train": 572, "val": 143}
    ds = SegmentationSplit(STANFORD_BACKGROUND, root, "val")
    sizes = {ds.read_label(i).shape for i in range(len(ds))}
    assert len(sizes) > 5  # many sizes: nothing may assume one per split
    assert all(ds.read_image(i).shape[:2] == ds.read_label(i).shape for i in range(0, len(ds), 20))


def _fake(base: Path) -> tuple[Path, dataclasses.dataclass]:
    """Three images of three sizes with labels, a manifest and split lists of their own: a spec served from a
    file:// URL as the official archive is over HTTP."""
    rng = np.random.default_rng(0)
    folder = base / "iccv09Data"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    ids = ["0000001", "0000002", "0000003"]
    for image_id, (h, w) in zip(ids, [(24, 32), (32, 24), (20, 32)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"{image_id}.jpg")
        label = rng.integers(-1, 8, (h, w))
        (folder / "labels" / f"{image_id}.regions.txt").write_text("\n".join(" ".join(map(str, r)) for r in label))
    (folder / "labels" / "0000001.surfaces.txt").write_text("not used\n")  # in the archive, not in the manifest
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(base).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and "surfaces" not in p.name]
    (base / "manifest.sha256").write_text("\n".join(lines) + "\n")
    (base / "train.txt").write_text("0000001\n0000002\n")
    (base / "val.txt").write_text("0000003\n")
    archive = base / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="iccv09Data")
    spec = dataclasses.replace(
        STANFORD_BACKGROUND, name="sb_fake", manifest=str(base / "manifest.sha256"),
        splits={"train": str(base / "train.txt"), "val": str(base / "val.txt")},
        archive=dataclasses.replace(STANFORD_BACKGROUND.archive, url=archive.as_uri()))
    return archive, spec


def test_a_download_is_checked_file_by_file_then_published(tmp_path):
    _, spec = _fake(tmp_path / "server")
    root, splits = fetch(spec, None, str(tmp_path / "raw"))
    assert splits == {"train": 2, "val": 1} and root == tmp_path / "raw" / "sb_fake"
    assert sorted(p.name for p in (tmp_path / "raw" / "archives").iterdir()) == ["iccv09Data.tar.gz"]
    ds = SegmentationSplit(spec, root, "train")
    assert ds.read_label("0000002").shape == (32, 24)


@pytest.mark.parametrize("damage", ["altered file", "truncated archive"])
def test_a_corrupted_download_is_rejected_and_leaves_nothing_that_reads_as_valid(tmp_path, damage):
    archive, spec = _fake(tmp_path / "server")
    if damage == "altered file":
        folder = tmp_path / "server" / "iccv09Data"
        (folder / "labels" / "0000003.regions.txt").write_text("0 0\n0 0\n")
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname="iccv09Data")
        match = r"do not match their sha256 checksum, e.g. iccv09Data/labels/0000003\.regions\.txt"
    else:
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        match = "truncated or corrupt"
    with pytest.raises(DatasetError, match=match):
        fetch(spec, None, str(tmp_path / "raw"))
    raw = tmp_path / "raw"
    assert [p.name for p in raw.rglob("*") if p.is_file()] == []  # no archive, no .part, no unpacked files
    with pytest.raises(DatasetError, match="not found"):
        spec.locate(None, str(raw))


def test_a_local_copy_with_an_altered_file_is_named(tmp_path):
    _, spec = _fake(tmp_path / "copy")
    (tmp_path / "copy" / "iccv09Data" / "images" / "0000002.jpg").write_bytes(b"changed")
    with pytest.raises(DatasetError, match=r"iccv09Data/images/0000002\.jpg"):
        fetch(spec, str(tmp_path / "copy" / "iccv09Data"), str(tmp_path / "raw"))
