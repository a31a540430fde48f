"""The folder dataset: a folder made here runs through features -> k-means -> evaluation with images of three
sizes, and every bad input of its layout is one error naming the file, with nothing cached."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError, dataset_spec, fetch, get_spec
from tests.conftest import make_config

SIZES = [(40, 56), (56, 42), (42, 42)]  # (height, width): three sizes, both orientations


def make_folder(root: Path, n: int = 6, splits: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        h, w = SIZES[i % 3]
        suffix = (".jpg", ".png", ".bmp")[i % 3]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"img{i}{suffix}")
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[0] = 255  # void
        Image.fromarray(label, mode="L").save(root / "labels" / f"img{i}.png")
    (root / "classes.txt").write_text("sky\nground\nthing\n")
    if splits:
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("".join(f"img{i}\n" for i in range(n - 3)))
        (root / "splits" / "val.txt").write_text("".join(f"img{i}\n" for i in range(n - 3, n)))
    return root


def test_classes_and_splits_come_from_the_folder(tmp_path):
    root = make_folder(tmp_path / "mine")
    spec = get_spec("folder").bind(root)
    assert spec.class_names == ("sky", "ground", "thing") and spec.n_classes == 3 and spec.ignore_index == 255
    assert fetch(spec, str(root), str(tmp_path))[1] == {"train": 3, "val": 3}
    alone = get_spec("folder").bind(make_folder(tmp_path / "nosplits", splits=False))
    assert list(alone.splits) == ["all"] and [s.name for s in alone.samples(alone.root, "all")][:2] == ["img0", "img1"]


def test_a_folder_runs_through_features_kmeans_and_evaluation_with_three_sizes(tmp_path, monkeypatch):
    from bench.runs import run_dir, run_evaluate, run_features, run_train

    monkeypatch.setattr("bench.tracking.log_run", lambda *a, **k: None)
    root = make_folder(tmp_path / "mine")
    cfg = make_config("folder", **{"data.local_copy": str(root), "data.keep_aspect": True,
                                   "backbone.name": "vit_small_patch8_224.dino", "backbone.weights": "random",
                                   "backbone.weights_sha256": None, "features.height": 32, "features.width": 32,
                                   "features.cache_dir": str(tmp_path / "cache"), "run.runs_dir": str(tmp_path / "runs"),
                                   "kmeans.n_init": 1, "kmeans.k": 0})
    for split in ("train", "val"):
        run_features(cfg, split, progress=False)
    from bench.features import load_features

    grids = {tuple(g) for g in load_features(cfg, "val").grids.tolist()}
    assert grids == {(3, 5), (5, 3), (4, 4)}  # each image its own grid (keep_aspect)
    run_train(cfg, "kmeans", 0, progress=False)
    metrics = run_evaluate(cfg, "kmeans", 0, progress=False)
    assert metrics["n_images"] == 3 and metrics["n_clusters"] == 3 and 0 <= metrics["miou"] <= 100
    confusion = np.loadtxt(run_dir(cfg, "kmeans", 0) / "confusion.csv", delimiter=",")
    assert confusion.sum() == sum((h - 1) * w for h, w in SIZES)  # every non-void pixel at its label's resolution
    assert sorted(json.loads((run_dir(cfg, "kmeans", 0) / "metrics.json").read_text())["per_class_iou"]) == [
        "ground", "sky", "thing"]


def _bad(root: Path, fault: str) -> str:
    if fault == "image without label":
        (root / "labels" / "img1.png").unlink()
        return r"image .*images/img1\.png has no label"
    if fault == "label without image":
        (root / "images" / "img2.bmp").unlink()
        return r"label .*labels/img2\.png has no image"
    if fault == "label of another size":
        Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(root / "labels" / "img0.png")
        return r"label .*labels/img0\.png is 5x5 but its image .*img0\.jpg is 56x40"
    if fault == "class id outside classes.txt":
        label = np.zeros((40, 56), np.uint8)
        label[3, 3] = 7
        Image.fromarray(label, mode="L").save(root / "labels" / "img3.png")
        return r"label .*labels/img3\.png holds class id\(s\) \[7\] outside the 3 classes of .*classes\.txt"
    if fault == "empty split list":
        (root / "splits" / "val.txt").write_text("\n")
        return r"split list .*splits/val\.txt is empty"
    if fault == "split list naming a missing image":
        (root / "splits" / "val.txt").write_text("img3\nnope\n")
        return r"no image images/nope\.jpg\|jpeg\|png\|bmp for id 'nope' \(listed in .*splits/val\.txt\)"
    if fault == "unreadable image":
        (root / "images" / "img4.png").write_bytes(b"not an image")
        return r"cannot read image .*images/img4\.png"
    if fault == "missing classes.txt":
        (root / "classes.txt").unlink()
        return r"classes\.txt is missing"
    raise AssertionError(fault)


FAULTS = ["image without label", "label without image", "label of another size", "class id outside classes.txt",
          "empty split list", "split list naming a missing image", "unreadable image", "missing classes.txt"]


@pytest.mark.parametrize("fault", FAULTS)
def test_each_bad_input_is_one_error_naming_the_file_and_nothing_is_cached(tmp_path, fault):
    from bench.features import ensure_features

    root = make_folder(tmp_path / "mine")
    match = _bad(root, fault)
    with pytest.raises(DatasetError, match=match):
        fetch(get_spec("folder").bind(root) if fault != "missing classes.txt" else get_spec("folder"), str(root),
              str(tmp_path))
    cfg = make_config("folder", **{"data.local_copy": str(root), "backbone.name": "vit_small_patch8_224.dino",
                                   "backbone.weights": "random", "backbone.weights_sha256": None,
                                   "features.height": 32, "features.width": 32,
                                   "features.cache_dir": str(tmp_path / "cache")})
    with pytest.raises(DatasetError, match=match):
        dataset_spec(cfg).verify(root) if fault != "missing classes.txt" else dataset_spec(cfg)
    if fault != "missing classes.txt":
        with pytest.raises(DatasetError):
            ensure_features(cfg, "train", progress=False)
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != f".{p.name}"]
    assert [p for p in cached if not p.name.endswith(".lock")] == []


def test_the_cli_says_what_the_folder_dataset_needs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app
    from tests.conftest import PARAMS

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fetch", "--params", str(PARAMS), "--dataset", "folder"])
    assert result.exit_code == 2 and "the folder dataset needs its folder" in result.output
    assert "ACSEG_FOLDER_DIR" in result.output


# ----------------------------------------------------------------------- read as the user means it


def test_extensions_match_in_any_case_and_jpeg_counts(tmp_path):
    from bench.data import SegmentationSplit

    root = make_folder(tmp_path / "mine")
    (root / "images" / "img1.png").rename(root / "images" / "img1.PNG")
    (root / "images" / "img0.jpg").rename(root / "images" / "img0.Jpeg")
    (root / "labels" / "img2.png").rename(root / "labels" / "img2.PNG")
    spec = get_spec("folder").bind(root)
    assert fetch(spec, str(root), str(tmp_path), progress=False)[1] == {"train": 3, "val": 3}
    train = SegmentationSplit(spec, root, "train")
    assert [(s.image, s.label) for s in train.samples] == [("images/img0.Jpeg", "labels/img0.png"),
                                                           ("images/img1.PNG", "labels/img1.png"),
                                                           ("images/img2.bmp", "labels/img2.PNG")]
    assert train[1][0].shape == (3, 56, 42) and train.read_label("img2").shape == (42, 42)


@pytest.mark.parametrize("extra, first, second", [("images/img0.png", "images/img0.jpg", "images/img0.png"),
                                                  ("labels/img1.PNG", "labels/img1.PNG", "labels/img1.png")])
def test_two_files_for_one_id_are_an_error_naming_both(tmp_path, extra, first, second):
    root = make_folder(tmp_path / "mine")
    kind = extra.split("/")[0]
    (root / extra).write_bytes((root / kind / Path(second if extra == first else first).name).read_bytes())
    with pytest.raises(DatasetError, match=rf".*{first}\.? and .*{second} are two {kind[:-1]}s for id"):
        fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)


def test_an_image_named_with_a_space_or_comma_is_refused_naming_it(tmp_path):
    root = make_folder(tmp_path / "mine", splits=False)
    (root / "images" / "img0.jpg").rename(root / "images" / "my img,0.jpg")
    (root / "labels" / "img0.png").rename(root / "labels" / "my img,0.png")
    with pytest.raises(DatasetError, match=r"the id 'my img,0' of .*images/my img,0\.jpg contains whitespace"):
        fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)


def test_a_split_list_line_with_a_second_word_is_refused_not_cut(tmp_path):
    root = make_folder(tmp_path / "mine")
    (root / "splits" / "val.txt").write_text("img3\nimg4 img5\n")  # today: img4 alone, img5 silently dropped
    with pytest.raises(DatasetError, match=r"split list .*splits/val\.txt, line 2: id 'img4 img5' contains whitespace"):
        fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)
    (root / "splits" / "val.txt").write_bytes("\ufeffimg3\nimg4\r\nimg5\n".encode())  # a BOM, CRLF
    spec = get_spec("folder").bind(root)
    assert [s.name for s in spec.samples(root, "val")] == ["img3", "img4", "img5"]


def test_classes_txt_is_read_as_written(tmp_path):
    root = make_folder(tmp_path / "mine")
    (root / "classes.txt").write_bytes("\ufeff sky \r\nground\n\nthing\n".encode())
    assert get_spec("folder").bind(root).class_names == ("sky", "ground", "thing")
    (root / "classes.txt").write_text("sky\nground\nsky\nthing\nground\n")
    with pytest.raises(DatasetError, match=r"classes\.txt names 'ground', 'sky' more than once"):
        get_spec("folder").bind(root)
    (root / "classes.txt").write_bytes("sky\ncaf\xe9\nthing\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"folder dataset: .*classes\.txt is not UTF-8"):
        get_spec("folder").bind(root)


def test_an_empty_split_is_an_error_naming_the_folder_or_list(tmp_path):
    root = make_folder(tmp_path / "empty", n=0, splits=False)
    with pytest.raises(DatasetError, match=r"empty/images holds no image .*split 'all' would be empty"):
        fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)
    root = make_folder(tmp_path / "mine")
    (root / "splits" / "val.txt").write_bytes("\ufeff\n  \n".encode())  # a BOM and blank lines list nothing
    with pytest.raises(DatasetError, match=r"split list .*splits/val\.txt is empty"):
        fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)


def test_fetch_decodes_each_image_and_label_once(tmp_path, monkeypatch):
    from bench.datasets.folder import FolderDataset

    root = make_folder(tmp_path / "mine")
    reads = []
    read_label = FolderDataset.read_label
    monkeypatch.setattr(FolderDataset, "read_label",
                        lambda self, path: reads.append(path.name) or read_label(self, path))
    fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)
    assert sorted(reads) == [f"img{i}.png" for i in range(6)]  # verify reads the labels; decode_check does not again
    data = (root / "images" / "img3.jpg").read_bytes()
    (root / "images" / "img3.jpg").write_bytes(data[: len(data) // 2])  # its header still reads
    with pytest.raises(DatasetError, match=r"cannot read image .*images/img3\.jpg"):
        fetch(get_spec("folder").bind(root), str(root), str(tmp_path), progress=False)


def test_a_folder_fingerprint_hashes_the_split_files_and_ignores_where_the_folder_is(tmp_path):
    import shutil

    from bench.data import fetch_record

    root = make_folder(tmp_path / "mine")
    spec = get_spec("folder").bind(root)
    record = fetch_record(spec, fetch(spec, str(root), str(tmp_path), progress=False)[1], root, progress=False)
    prints = record["split_fingerprints"]
    assert set(prints) == {"train", "val"} and str(tmp_path) not in json.dumps(record)
    shutil.copytree(root, tmp_path / "copy")
    assert get_spec("folder").bind(tmp_path / "copy").fingerprints(tmp_path / "copy", ["train", "val"],
                                                                   progress=False) == prints
    image = np.array(Image.open(root / "images" / "img4.png"))
    image[0, 0, 0] ^= 1
    Image.fromarray(image).save(root / "images" / "img4.png")  # val
    after = spec.fingerprints(root, ["train", "val"], progress=False)
    assert after["val"] != prints["val"] and after["train"] == prints["train"]
    label = np.array(Image.open(root / "labels" / "img0.png"))
    label[5, 5] = (label[5, 5] + 1) % 3
    Image.fromarray(label, mode="L").save(root / "labels" / "img0.png")  # train
    assert spec.fingerprints(root, ["train"], progress=False)["train"] != after["train"]
