"""Reading as a user means it: every image mode by an explicit rule (16-bit scaled, not clipped), PIL's pixel limit
as an error naming the image, split lists of whole-line ids (BOM, encoding, ids that would break CSVs refused), and
fetch decoding every file once (a file cut after its header is not "verified")."""

import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError, fetch
from bench.datasets.base import decode_check, image_size, read_id_list, read_image
from tests.conftest import register_dataset


def _gray(values) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=2)


def test_a_16bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # what PIL makes of a 16-bit grayscale PNG
    assert read_image(path).tolist() == _gray([[0, 0, 1, 128, 255]]).tolist()  # v >> 8, not 255 everywhere


def _png16_rgb(path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG (which PIL cannot write)."""
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_16bit_rgb_png_reads_its_high_byte_like_16bit_gray(tmp_path):
    _png16_rgb(tmp_path / "rgb16.png", np.array([[[0, 32768, 65535], [256, 511, 65280]]]))
    assert read_image(tmp_path / "rgb16.png").tolist() == [[[0, 128, 255], [1, 1, 255]]]


def _save(path, mode: str):
    """An image of ``mode`` and the RGB it must read as."""
    if mode == "F [0,1]":
        Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), _gray([[0, 128, 255]])
    if mode == "F [0,255]":
        Image.fromarray(np.array([[0.0, 2.4, 200.0]], np.float32)).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif"), _gray([[0, 2, 200]])
    if mode in ("RGBA", "LA"):  # alpha dropped, stored colours kept even where fully transparent
        rgba = np.array([[[200, 10, 20, 0], [30, 40, 50, 255]]], np.uint8)
        im = Image.fromarray(rgba, "RGBA")
        im = im if mode == "RGBA" else im.convert("LA")
        im.save(path.with_suffix(".png"))
        return path.with_suffix(".png"), rgba[..., :3] if mode == "RGBA" else np.asarray(im.convert("RGB"))
    if mode == "P":  # with a transparent entry: through the palette, the entry's colour kept
        p = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
        p.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
        p.save(path.with_suffix(".png"), transparency=1)
        return path.with_suffix(".png"), np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    if mode == "1":
        Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(path.with_suffix(".png"))
        return path.with_suffix(".png"), _gray([[0, 255]])
    if mode == "CMYK":
        Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).convert("CMYK").save(path.with_suffix(".jpg"), quality=100)
        return path.with_suffix(".jpg"), np.full((4, 4, 3), 128, np.uint8)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["F [0,1]", "F [0,255]", "RGBA", "LA", "P", "1", "CMYK"])
def test_every_mode_reads_by_its_documented_rule(tmp_path, mode):
    path, expected = _save(tmp_path / "x", mode)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2 if mode == "CMYK" else 0)


def test_a_float_image_outside_0_255_is_refused_not_clipped(tmp_path):
    Image.fromarray(np.array([[-1.0, 300.0]], np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match=r"image .*f\.tif is a float image with values outside \[0, 255\]"):
        read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("side", [12, 20])  # 144 pixels: PIL only warns (1x..2x the limit); 400: PIL refuses
def test_an_image_over_pils_pixel_limit_is_an_error_naming_it_and_the_limit(tmp_path, monkeypatch, side):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    match = rf"image .*huge\.png has {side * side} pixels.*over PIL's limit of 100 \(PIL\.Image\.MAX_IMAGE_PIXELS"
    for read in (read_image, image_size):
        with pytest.warns(Image.DecompressionBombWarning) if side == 12 else _nothing():
            with pytest.raises(DatasetError, match=match):
                read(path)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _list(tmp_path, content: bytes | str):
    path = tmp_path / "val.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_a_split_list_line_is_one_whole_id_and_a_bom_is_not_part_of_it(tmp_path):
    path = _list(tmp_path, "\ufeffa1\n  b2  \r\n\nc3.PNG\nd4.jpeg\n")
    assert read_id_list(path, "T", "how", "val") == ["a1", "b2", "c3", "d4"]


@pytest.mark.parametrize("line, reason", [("img1 extra", "whitespace"), ("img1\tx", "whitespace"),
                                          ("a,b", "a comma"), ('a"b', "a double quote")])
def test_an_id_that_breaks_csv_or_command_lines_names_the_list_line_and_id(tmp_path, line, reason):
    path = _list(tmp_path, f"ok\n{line}\n")
    match = rf"split list .*val\.txt, line 2: id {re.escape(repr(line))} contains {reason}"
    with pytest.raises(DatasetError, match=match):
        read_id_list(path, "T", "how", "val")


def test_a_non_utf8_or_bom_only_list_is_an_error_naming_it(tmp_path):
    with pytest.raises(DatasetError, match=r"split list .*val\.txt is not UTF-8"):
        read_id_list(_list(tmp_path, b"caf\xe9\n"), "T", "how", "val")
    with pytest.raises(DatasetError, match=r"split list .*val\.txt is empty"):
        read_id_list(_list(tmp_path, "\ufeff\n \n"), "T", "how", "val")
    with pytest.raises(DatasetError, match=r"val\.txt names 'a' twice \(lines 1 and 3\)"):
        read_id_list(_list(tmp_path, "a\nb\na.png\n"), "T", "how", "val")


def _truncate_after_header(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("lenient", [False, True])  # a library may have set PIL's LOAD_TRUNCATED_IMAGES
def test_fetch_decodes_every_image_so_one_cut_after_its_header_is_named(synthetic_dataset, monkeypatch, lenient):
    from PIL import ImageFile

    spec, root = synthetic_dataset
    _truncate_after_header(root / "val" / "v1.png")
    spec = register_dataset("synthetic", root, {"train": [f"t{i}.png" for i in range(3)],
                                                "val": ["v0.png", "v1.png"]})  # the manifest agrees with the cut file
    assert image_size(root / "val" / "v1.png") == (56, 70)  # its header still reads
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient)
    with pytest.raises(DatasetError, match=r"cannot read image .*val/v1\.png"):
        fetch(spec, str(root), "unused", progress=False)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient  # restored


def test_decode_check_names_a_label_with_values_the_dataset_does_not_define(synthetic_dataset):
    spec, root = synthetic_dataset
    Image.fromarray(np.full((56, 70), 200, np.uint8)).save(root / "trainannot" / "t2.png")
    with pytest.raises(DatasetError, match=r"label .*trainannot/t2\.png: label values \[200\]"):
        decode_check(spec, root, ["train"], progress=False)
    assert decode_check(spec, root, ["val"], progress=False) == 4  # 2 images + 2 labels
