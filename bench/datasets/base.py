"""What every dataset says about itself, and the machinery shared by datasets that come as official archives.

A :class:`DatasetSpec` answers four questions, each in one method:

- where it is: :meth:`~DatasetSpec.fetch` (download, or take a local copy) and :meth:`~DatasetSpec.locate`;
- what a split holds: :meth:`~DatasetSpec.samples`, the split's (image, label) pairs;
- what a label means: :meth:`~DatasetSpec.decode_label`, raw label values -> class ids, void = ``ignore_index``;
- whether it is complete: :meth:`~DatasetSpec.verify`, which raises naming what is missing or altered;
- what exactly a split is: :meth:`~DatasetSpec.fingerprints`, one sha256 per split over its samples' contents.

:func:`decode_check` decodes every image and label once (``fetch`` runs it): a header read passes a file that is
cut after its header.

:class:`ArchiveDataset` is the common case of a dataset published as archives (VOC, COCO-Stuff, Cityscapes):
archives are downloaded under a temporary name and renamed only once complete and verified (by their published
checksum where there is one, and always by reading every member: zip CRC-32s, tar structure), then unpacked
into a temporary folder that is renamed into place only once every file of every split list is there. So
nothing half-downloaded or half-unpacked is ever used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import tarfile
import tempfile
import unicodedata
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, ClassVar, Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from bench.registry import Registry

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """Missing, incomplete, corrupt or unverifiable data; the message says what and how to get it."""


class SplitAbsent(DatasetError):
    """A split whose list (or folder) is not there at all: reported as absent, an error only if it is used."""


@dataclass(frozen=True)
class Sample:
    name: str  # the image's id within its split (the name the feature cache and the reports use)
    image: str  # path relative to the dataset root
    label: str  # path relative to the dataset root


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A named dataset: its classes, void id, splits, and how to get, read and verify it."""

    name: str
    title: str  # how reports name it
    class_names: tuple[str, ...]
    ignore_index: int  # the void id of decoded labels
    splits: Mapping[str, object]  # split name -> where the split comes from (dataset-specific)
    how_to_get: str
    env_var: str | None = None  # environment variable that may name a local copy (read only by bench.config)
    # True where verify() already reads and range-checks every label (folder): decode_check then decodes only images
    verify_decodes_labels: ClassVar[bool] = False

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    # Every dataset implements these.
    def samples(self, root: Path, split: str) -> list[Sample]:
        raise NotImplementedError

    def verify(self, root: Path) -> dict[str, int]:
        """{split: number of images} for every split present and complete; raises naming missing files."""
        raise NotImplementedError

    def fetch(self, local_copy: str | None, download_dir: str) -> Path:
        """The dataset's root: the local copy, or downloaded (and unpacked). Not yet verified."""
        raise NotImplementedError

    def locate(self, local_copy: str | None, download_dir: str) -> Path:
        """Where a fetched dataset lives (no download, no verification)."""
        raise NotImplementedError

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values (as stored in the PNG) -> class ids 0..C-1 with void = ignore_index (int64).

        The default takes the values as they are; values that are neither a class nor void are an error."""
        raw = np.asarray(raw, dtype=np.int64)
        bad = (raw != self.ignore_index) & ((raw < 0) | (raw >= self.n_classes))
        if bad.any():
            raise ValueError(f"label values {sorted(set(np.unique(raw[bad]).tolist()))[:10]} are neither one of the "
                             f"{self.n_classes} classes nor the void id {self.ignore_index}")
        return raw

    def read_label(self, path: Path) -> np.ndarray:
        """A label file's raw values [H, W] (int64): a single-channel PNG unless the dataset stores labels
        otherwise; :meth:`decode_label` maps them to class ids. An unreadable file is an error naming it."""
        return read_png_label(path)

    def bind(self, root: str | Path | None) -> DatasetSpec:
        """The spec of the copy at ``root`` (the local copy, None: the download): itself, except for datasets that
        learn their classes from the copy (``folder``)."""
        return self

    def record(self, root: Path) -> dict:
        """Facts for the fetch stage's record beyond the common ones (free of machine-specific paths)."""
        return {}

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(f"{self.title} has no split {split!r}; splits: {list(self.splits)}")

    # ---- what exactly a split is
    def known_digests(self) -> Mapping[str, str]:
        """{relative path: sha256} of files :meth:`verify` has already checked (a manifest): fingerprints take these
        instead of hashing the files again. Valid only after verify."""
        return {}

    def file_digests(self, root: Path, rels: Iterable[str], progress: bool = True) -> dict[str, str]:
        """{relative path: sha256} of files under root: from :meth:`known_digests`, the others hashed."""
        known, root = self.known_digests(), Path(root)
        rels = sorted(set(rels))
        todo = [r for r in rels if r not in known]
        hashed = {}
        for rel in tqdm(todo, desc=f"hashing {self.name}", unit="file", disable=not progress or not todo):
            try:
                hashed[rel] = sha256_file(root / rel)
            except OSError as e:
                raise DatasetError(f"{self.title}: cannot read {root / rel}: {e.strerror or e}. Run `acseg-bench "
                                   f"fetch --dataset {self.name}` to see what is missing") from e
        return {r: known[r] if r in known else hashed[r] for r in rels}

    def fingerprints(self, root: Path, splits: Iterable[str], progress: bool = True) -> dict[str, str]:
        """{split: sha256} over each split's samples sorted by name, one line each: ``name, image path, sha256 of the
        image, label path, sha256 of the label`` (tab-separated, paths relative to root). It identifies exactly the
        content a split's features and scores come from, wherever the copy sits, so a cache keyed on it cannot serve
        features of other pixels; it covers only the split's own files. Call it after :meth:`verify` (manifest
        datasets take the digests verify checked)."""
        root = Path(root)
        samples = {split: sorted(self.samples(root, split), key=lambda s: s.name) for split in splits}
        digests = self.file_digests(root, (r for ss in samples.values() for s in ss for r in (s.image, s.label)),
                                    progress)
        return {split: sha256_text([f"{s.name}\t{s.image}\t{digests[s.image]}\t{s.label}\t{digests[s.label]}"
                                    for s in ss])
                for split, ss in samples.items()}


# ------------------------------------------------------------------------------------------- reading

# What a corrupt or truncated file raises inside PIL's decoders (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


@contextmanager
def open_image(path: Path, what: str = "image") -> Iterator:
    """The PIL image at ``path`` (header read; ``load()`` decodes it), within PIL's pixel limit. Anything PIL cannot
    read, and an image over ``PIL.Image.MAX_IMAGE_PIXELS``, is a DatasetError naming the file: PIL only warns
    between 1x and 2x the limit, and a bomb-sized image would otherwise exhaust memory mid-run."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.size[0] * im.size[1] > limit:
                raise DatasetError(_too_large(path, what, im.size[0] * im.size[1], limit, im.size))
            yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # over 2x the limit (or a warning a filter made an error) PIL refuses before we see the size; its message has it
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise DatasetError(_too_large(path, what, int(found[1]) if found else None, Image.MAX_IMAGE_PIXELS)) from e
    except _DECODE_ERRORS as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from e


def _too_large(path: Path, what: str, pixels: int | None, limit: int | None,
               size: tuple[int, int] | None = None) -> str:
    count = "more pixels" if pixels is None else f"{pixels:,} pixels" + (f" ({size[0]}x{size[1]})" if size else "")
    return (f"{what} {path} has {count}, over PIL's limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS, a guard against "
            "decompression bombs): resize it, or if you trust it and mean it at full size, raise that limit in the "
            "process that runs acseg-bench (docs/datasets.md#image-files)")


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3], fully decoded (``load()``: a file cut short is an error, unless something set PIL's
    ``ImageFile.LOAD_TRUNCATED_IMAGES``; :func:`decode_check` makes sure it is not). Every mode is converted by an
    explicit rule, because ``convert("RGB")`` clips 16-bit values (a 16-bit PNG reads all white):

    - 16-bit (``I;16``, ``I;16B``, ``I;16L``; ``I`` from a PNG, which holds 0..65535): the high byte, ``v >> 8``
      (0, 32768, 65535 -> 0, 128, 255), the rule PIL itself applies to 16-bit RGB PNGs (which it opens as RGB);
      ``I`` from a TIFF: ``v >> (bits - 8)`` by its BitsPerSample; ``I`` of unknown bit depth is an error;
    - float ``F``: values in [0, 1] (none above 1) are scaled by 255, otherwise read as 0..255, both rounded;
      negative, non-finite or >255 values are an error (clipping would hide that the image means something else);
    - palette (``P``, ``PA``): through the palette;
    - alpha (``RGBA``, ``LA``, ``PA``): dropped, the stored colours kept. Nothing is composited onto a background:
      the features see what the label was drawn on, whatever a viewer shows for transparent pixels;
    - ``1``, ``L``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion.

    EXIF orientation is not applied: labels are drawn on the stored pixel grid. An unreadable file, or one over
    PIL's pixel limit, is an error naming it."""
    with open_image(path) as im:
        im.load()
        return np.array(_rgb(im, path), dtype=np.uint8, order="C")  # a writable copy, whatever PIL lends


def _rgb(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16"):
        return _gray(np.asarray(im).astype(np.uint16) >> 8)
    if mode == "I":
        bits = 16 if im.format == "PNG" else _tiff_bits(im)
        values = np.asarray(im, dtype=np.int64)
        if bits is None:
            raise DatasetError(f"image {path} has 32-bit integer pixels ({im.format}) of unknown bit depth: save it as "
                               "an 8-bit (or 16-bit PNG) image")
        if values.size and (values.min() < 0 or values.max() >= 1 << bits):
            raise DatasetError(f"image {path} has values {values.min()}..{values.max()}, outside its {bits}-bit range: "
                               "save it as an 8-bit image")
        return _gray(values >> (bits - 8) if bits > 8 else values)
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 255):
            raise DatasetError(f"image {path} is a float image with values outside [0, 255] (min {np.nanmin(values)}, "
                               f"max {np.nanmax(values)}): save it as an 8-bit image")
        return _gray(np.rint(values * 255 if values.size and values.max() <= 1 else values))
    if mode in ("RGBA", "RGBa", "LA", "La", "PA", "P"):  # P too: a palette with transparency converts without warning
        return np.asarray(im.convert("RGBA"))[..., :3]
    return np.asarray(im.convert("RGB"))


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[..., None], 3, axis=2)


def _tiff_bits(im) -> int | None:
    bits = getattr(im, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) else bits
    return int(bits) if isinstance(bits, int) and 8 <= bits <= 32 else None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header (nothing decoded); an unreadable file, or one over PIL's pixel
    limit, is an error naming it."""
    with open_image(path) as im:
        return im.size[1], im.size[0]


def read_png_label(path: Path) -> np.ndarray:
    """The values of a single-channel PNG label [H, W] (int64), fully decoded; anything else is an error naming the
    file."""
    with open_image(path, "label") as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise DatasetError(f"label {path} has mode {im.mode}, expected a single-channel PNG")
        im.load()
        return np.array(im, dtype=np.int64)


@contextmanager
def _truncated_images_rejected() -> Iterator[None]:
    """PIL pads a truncated file with grey when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set (some libraries set it):
    a decode check must not, so it is off for the check and restored after."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def decode_check(spec: DatasetSpec, root: Path, splits: Iterable[str], progress: bool = True) -> int:
    """Decode every image (:func:`read_image`) and label (``spec.read_label`` + ``spec.decode_label``) of the given
    splits once, as extraction and evaluation will: a checksum or a header read passes a file cut after its header,
    or a label with values the dataset does not define. Raises DatasetError naming the first bad file; returns the
    number of files decoded. Labels are skipped where :meth:`DatasetSpec.verify` already reads them
    (``verify_decodes_labels``), so each file is decoded once."""
    root = Path(root)
    files: dict[str, str] = {}  # relative path -> "image" | "label"; a file shared by splits is decoded once
    for split in splits:
        for s in spec.samples(root, split):
            files.setdefault(s.image, "image")
            if not spec.verify_decodes_labels:
                files.setdefault(s.label, "label")
    with _truncated_images_rejected():
        for rel, kind in tqdm(sorted(files.items()), desc=f"decoding {spec.name}", unit="file", disable=not progress):
            path = root / rel
            if kind == "image":
                read_image(path)
                continue
            try:
                spec.decode_label(spec.read_label(path))
            except ValueError as e:
                raise DatasetError(f"label {path}: {e}") from e
    return len(files)


# ------------------------------------------------------------------------------------------------ ids

ID_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # a list line naming a file: the extension is dropped


def bad_id_reason(image_id: str) -> str | None:
    """Why an image id cannot be used, or None. Ids are cells of CSV outputs, parts of file names and arguments
    on command lines: a comma, a double quote, whitespace or a control character in one breaks those (a CSV row
    with a column too many, an id cut in two), so such ids are refused at fetch rather than half-working."""
    for ch in image_id:
        if ch == ",":
            return "a comma"
        if ch == '"':
            return "a double quote"
        if ch.isspace():
            return "whitespace"
        if unicodedata.category(ch).startswith("C"):
            return f"the control character {ch!r}"
    return None


# ------------------------------------------------------------------------------------------- checksums


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    return _digest(path, hashlib.sha256(), chunk)


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    return _digest(path, hashlib.md5(), chunk)  # noqa: S324 (the checksum the datasets publish)


def _digest(path: Path, h, chunk: int) -> str:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_sha256_manifest(path: Path) -> dict[str, str]:
    """A ``sha256sum``-style manifest ("<sha256>  <relative path>" lines) -> {relative path: sha256}."""
    entries = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            entries[rel.strip()] = digest
    return entries


def sha256_text(lines: list[str]) -> str:
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


# -------------------------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str
    md5: str | None  # the published checksum; None where none is published (then: member CRCs / structure)
    size: str = ""  # for messages, e.g. "2 GB"


def check_archive(path: Path, archive: Archive) -> None:
    """Compare an archive with its published md5; a mismatch is an error naming the archive."""
    if archive.md5 is None:
        return
    actual = md5_file(path)
    if actual != archive.md5:
        raise DatasetError(
            f"archive {path} is truncated or corrupt: md5 {actual} ({path.stat().st_size} bytes), expected the "
            f"published {archive.md5}. Delete it and download it again from {archive.url}"
        )


DOWNLOAD_TIMEOUT = 120  # seconds without data before a download is given up


def download_archive(archive: Archive, dest_dir: Path, how_to_get: str,
                     check: Callable[[Path], None] | None = None) -> Path:
    """Download to ``.<name>.part``, check its size, its published checksum and ``check`` (e.g. every file against a
    manifest), then rename: the final name is always a complete, checked archive; a failed check removes the part."""
    final = Path(dest_dir) / archive.filename
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{archive.filename}.part")
    log.info("downloading %s (%s) from %s", archive.filename, archive.size or "size unknown", archive.url)
    try:
        # a stalled connection fails after `timeout` seconds without data instead of hanging the pipeline
        with urllib.request.urlopen(archive.url, timeout=DOWNLOAD_TIMEOUT) as response, open(part, "wb") as out:  # noqa: S310
            expected = response.headers.get("Content-Length")
            with tqdm(total=int(expected) if expected else None, unit="B", unit_scale=True, desc=archive.filename,
                      disable=None) as bar:
                while block := response.read(1 << 22):
                    out.write(block)
                    bar.update(len(block))
        got = part.stat().st_size
        if expected is not None and got != int(expected):
            raise DatasetError(f"the download of {archive.filename} from {archive.url} is truncated: {got} of "
                               f"{expected} bytes. Run fetch again")
        check_archive(part, archive)
        if check is not None:
            check(part)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DatasetError(f"could not download {archive.url}: {e}. Without internet: {how_to_get}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, final)
    return final


Selector = Callable[[str], "str | None"]  # archive member name -> path relative to the dataset root, or None


def extract_members(path: Path, dest: Path, select: Selector) -> int:
    """Extract the selected regular files of a zip or tar archive; every member read is checked (zip CRC-32,
    tar structure), so a truncated or corrupt archive is an error naming it. Returns the number extracted."""
    n = 0

    def write(rel: str, stream) -> None:
        target = _safe_target(dest, rel, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            shutil.copyfileobj(stream, out, length=1 << 20)

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    rel = None if info.is_dir() else select(info.filename)
                    if rel:
                        with zf.open(info) as stream:
                            write(rel, stream)
                        n += 1
        else:
            with tarfile.open(path) as tar:
                for member in tar:
                    rel = select(member.name) if member.isfile() else None
                    if rel:
                        with tar.extractfile(member) as stream:
                            write(rel, stream)
                        n += 1
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise DatasetError(f"archive {path} is truncated or corrupt ({type(e).__name__}: {e}). Delete it and "
                           "download it again") from e
    return n


def _safe_target(dest: Path, rel: str, archive: Path) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise DatasetError(f"archive {archive} has an unsafe member path {rel!r}")
    return dest.joinpath(*pure.parts)


# ------------------------------------------------------------------------------- archive-based datasets


@dataclass(frozen=True, kw_only=True)
class ArchiveDataset(DatasetSpec):
    """A dataset published as archives, used from its extracted official layout.

    Subclasses say where the layout may sit inside a local folder (:attr:`layout_roots`), which paths mark it
    (:attr:`layout_markers`), how a split is listed (:meth:`samples`) and where each archive member goes
    (:meth:`selector`).
    """

    archives: tuple[Archive, ...]
    official_sizes: Mapping[str, int] = field(default_factory=dict)  # split -> images in the official list
    layout_roots: tuple[str, ...] = ("",)  # candidate dataset roots inside a local copy
    layout_markers: tuple[str, ...] = ()  # relative paths that show a folder holds the layout
    downloadable: bool = True  # False: a login is needed, fetch explains the manual download

    def selector(self, archive: Archive, tmp_root: Path) -> Selector:
        raise NotImplementedError

    # ---- where it is
    def find_layout(self, src: Path) -> Path | None:
        """The dataset root inside ``src`` if ``src`` holds the extracted layout (even an incomplete one)."""
        if not src.is_dir():
            return None
        for rel in self.layout_roots:
            root = src / rel if rel else src
            if any((root / m).exists() for m in self.layout_markers):
                return root
        return None

    def _layout_text(self) -> str:
        roots = " or ".join(f"{r}/" for r in self.layout_roots if r)
        markers = ", ".join(f"{m}/" for m in self.layout_markers)
        return markers + (f" (directly or under {roots})" if roots else "")

    def find_archives(self, src: Path) -> dict[str, Path]:
        """The official archives in a local folder (or the folder of a given archive); names the missing."""
        folder = src if src.is_dir() else src.parent
        found = {a.filename: folder / a.filename for a in self.archives if (folder / a.filename).is_file()}
        if not found:
            raise DatasetError(
                f"{self.title}: {src} holds neither the extracted layout ({self._layout_text()}) nor the archives "
                f"{', '.join(a.filename for a in self.archives)}. To get it: {self.how_to_get}")
        missing = [a for a in self.archives if a.filename not in found]
        if missing:
            raise DatasetError(
                f"{self.title}: {folder} lacks the archive(s) "
                + ", ".join(f"{a.filename} ({a.url})" for a in missing) + f". To get it: {self.how_to_get}")
        return found

    def fetch(self, local_copy: str | None, download_dir: str) -> Path:
        unpacked = Path(download_dir) / self.name
        if local_copy:
            src = Path(local_copy).expanduser()
            if not src.exists():
                raise DatasetError(f"{self.title}: {src} does not exist. To get it: {self.how_to_get}")
            root = self.find_layout(src)
            if root is not None:
                return root
            archives = self.find_archives(src)
            if unpacked.is_dir():
                return unpacked
            return self.unpack(archives, unpacked)
        if unpacked.is_dir():
            return unpacked
        if not self.downloadable:
            raise DatasetError(f"{self.title} cannot be downloaded without a login. {self.how_to_get}")
        archives = {a.filename: download_archive(a, Path(download_dir) / "archives", self.how_to_get)
                    for a in self.archives}
        return self.unpack(archives, unpacked, checked=set(archives))

    def locate(self, local_copy: str | None, download_dir: str) -> Path:
        if local_copy:
            root = self.find_layout(Path(local_copy).expanduser())
            if root is not None:
                return root
        unpacked = Path(download_dir) / self.name
        if unpacked.is_dir():
            return unpacked
        where = local_copy or unpacked
        raise DatasetError(f"{self.title} not found at {where}: run `acseg-bench fetch` first. To get it: "
                           f"{self.how_to_get}")

    def unpack(self, archives: dict[str, Path], target: Path, checked: set[str] = frozenset()) -> Path:
        """Check and unpack the archives (in order) into a temporary folder, verify it, rename it to target.
        ``checked``: archives whose checksum was just verified (by their download)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-unpacking-"))
        try:
            for archive in self.archives:
                path = archives[archive.filename]
                if archive.filename not in checked:
                    check_archive(path, archive)
                n = extract_members(path, tmp, self.selector(archive, tmp))
                log.info("unpacked %d files from %s", n, path.name)
            self.verify(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    # ---- what a split holds, and whether it is complete
    def verify(self, root: Path) -> dict[str, int]:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{self.title}: folder {root} does not exist. To get it: {self.how_to_get}")
        present: dict[str, int] = {}
        for split in self.splits:
            try:
                samples = self.samples(root, split)
            except SplitAbsent:
                continue
            missing = [rel for s in samples for rel in (s.image, s.label) if not (root / rel).is_file()]
            if missing:
                raise DatasetError(
                    f"{self.title} at {root}: split {split!r} is incomplete, {len(missing)} files missing, e.g. "
                    f"{', '.join(missing[:5])}. To get it: {self.how_to_get}")
            official = self.official_sizes.get(split)
            if official is not None and len(samples) != official:
                log.warning("%s: split %r has %d images, the official one %d: results on it are not comparable "
                            "with published numbers", self.title, split, len(samples), official)
            present[split] = len(samples)
        if not present:
            raise DatasetError(f"{self.title}: no split found under {root} (expected {self._layout_text()}). "
                               f"To get it: {self.how_to_get}")
        return present

    def record(self, root: Path) -> dict:
        """Which images each present split holds (a checksum of the sorted names) and the official sizes."""
        lists = {}
        for split in self.splits:
            try:
                lists[split] = sha256_text(sorted(s.name for s in self.samples(root, split)))
            except SplitAbsent:
                pass
        return {"split_lists_sha256": lists, "official_sizes": dict(self.official_sizes)}


def read_id_list(path: Path, title: str, how_to_get: str, split: str) -> list[str]:
    """Image ids of a split list file: each non-blank line, stripped, is one whole id (a trailing .jpg, .jpeg, .png
    or .bmp dropped). A line is never cut at a space: every list read here (VOC's ImageSets/Segmentation, IIC's
    curated COCO-Stuff lists, the committed Stanford Background lists, the folder dataset's) has one id a line, so
    a line with a space is a mistake, refused with its line number like any id :func:`bad_id_reason` refuses. A
    BOM is not part of the first id (utf-8-sig). Absent lists are SplitAbsent; non-UTF-8, empty or duplicated ids
    are errors naming the list."""
    if not path.is_file():
        raise SplitAbsent(f"{title}: split {split!r} is absent: its list {path} is missing. To get it: {how_to_get}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{title}: the split list {path} is not UTF-8 ({e.reason} at byte {e.start}): save it as "
                           "UTF-8, one id a line") from e
    except OSError as e:
        raise DatasetError(f"{title}: cannot read the split list {path}: {e}") from e
    line_of: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token:
            continue
        reason = bad_id_reason(token)
        if reason:
            raise DatasetError(f"{title}: the split list {path}, line {number}: id {token!r} contains {reason}, which "
                               "breaks CSV outputs and command lines: one id a line, rename the image if it has one")
        if token.lower().endswith(ID_SUFFIXES):
            token = token.rsplit(".", 1)[0]
        if token in line_of:
            raise DatasetError(f"{title}: the split list {path} names {token!r} twice (lines {line_of[token]} and "
                               f"{number}): list each image once")
        line_of[token] = number
    if not line_of:
        raise DatasetError(f"{title}: the split list {path} is empty. To get it: {how_to_get}")
    return list(line_of)


DATASETS: Registry[DatasetSpec] = Registry("dataset", DatasetError, "see `acseg-bench datasets`")
register_dataset = DATASETS.register
get_spec = DATASETS.lookup


def dataset_title(name: str) -> str:
    return DATASETS[name].title if name in DATASETS else name
