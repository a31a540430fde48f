"""Shared fixtures: a synthetic dataset in the CamVid layout, and a handful of real CamVid images.

Integration tests use the real data and weights named by ACSEG_CAMVID_DIR / ACSEG_WEIGHTS_DIR (set by .ci/run);
they are skipped when those are not set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from bench.arithmetic import PINNED
from bench.config import pin_arithmetic

# The test process runs the default arithmetic (acseg.arithmetic: pinned) from its start, as a CLI process does: tests
# compare numbers computed here with numbers from the processes they start (Slurm jobs, DVC stages, workers), and
# torch chooses its kernels once per process, when it first runs (before this, nothing here has imported it).
pin_arithmetic(PINNED)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bench import data as data_mod  # noqa: E402
from bench.data import ManifestDataset  # noqa: E402

WEIGHTS_FILE = "dinov2_vits14_imgfocus.safetensors"
WEIGHTS_SHA256 = "e51b70c0d254050b57cbbbfda9408b0c2b6800f6cca26d5237e7418c8e248de8"
ROOT = Path(__file__).parents[1]
PARAMS = ROOT / "params.yaml"

# A few-second configuration over the repository's params (what the tiny tests run).
TINY = {
    "acseg.depth": 1, "acseg.width": 32, "acseg.heads": 2, "acseg.mlp_width": 64,
    "acseg.train.steps": 5, "acseg.train.batch_size": 2, "acseg.train.warmup_steps": 1, "acseg.train.log_every": 1,
    # k-means restarts: the defaults (50 for ACSeg's classifier) cost most of a tiny run; tests of restarts set theirs
    "acseg.classifier.n_init": 2, "kmeans.n_init": 2, "dsm.n_init": 2, "dsm.segment_n_init": 2,
    **{f"{method}.{key}": value for method in ("stego", "stego_kmeans", "stego_published")  # one STEGO training
       for key, value in {"steps": 5, "batch_size": 2, "knn": 2, "knn_draw": 2, "feature_samples": 3,
                          "neg_samples": 1, "log_every": 1, "calibration_batches": 2, "kmeans_n_init": 2}.items()},
    "ablations.sweeps": {"loss": {"loss": ["soft_modularity"]}, "feature": {"feature": ["keys"]}},
    "ablations.train_steps": 5, "ablations.jobs": 1,
}


def dotlist(overrides: dict) -> list[str]:
    """{"section.field": value} -> ["section.field=<value as YAML>"], the overrides load_config reads."""
    import json

    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def make_config(dataset: str | None = None, tiny: bool = True, params: Path = PARAMS, **overrides):
    """The repository's params (optionally the tiny settings) with ``overrides``, no environment."""
    from bench.schema import load_config

    return load_config(params, dataset=dataset, overrides=dotlist({**(TINY if tiny else {}), **overrides}),
                       environment={})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register_dataset(name: str, root: Path, splits: dict[str, list[str]], n_classes: int = 11) -> ManifestDataset:
    """Write a manifest for the files under root and register a CamVid-like spec under `name`."""
    lines = []
    for split, names in splits.items():
        for folder in (split, split + "annot"):
            lines += [f"{_sha(root / folder / n)}  {folder}/{n}" for n in names]
    manifest = root.parent / f"{name}.sha256"
    manifest.write_text("\n".join(lines) + "\n")
    spec = ManifestDataset(
        name=name, title=f"{name} (test)", class_names=tuple(f"c{i}" for i in range(n_classes)), ignore_index=11,
        splits={s: (s, s + "annot") for s in ("train", "val", "test")}, manifest=str(manifest),
        url="https://example.invalid/none.tar.gz", archive_subdir="x", how_to_get="(test data: made by the test)",
    )
    data_mod.DATASETS[name] = spec
    return spec


def write_synthetic_dataset(name: str, root: Path) -> ManifestDataset:
    """3 train + 2 val random 56x70 images with labels 0..10 and some void (11), registered as ``name``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    splits = {"train": [f"t{i}.png" for i in range(3)], "val": [f"v{i}.png" for i in range(2)]}
    for split, names in splits.items():
        (root / split).mkdir(parents=True)
        (root / (split + "annot")).mkdir()
        for n in names:
            Image.fromarray(rng.integers(0, 255, (56, 70, 3), dtype=np.uint8)).save(root / split / n)
            Image.fromarray(rng.integers(0, 12, (56, 70), dtype=np.uint8)).save(root / (split + "annot") / n)
    return register_dataset(name, root, splits)


@pytest.fixture
def synthetic_dataset(tmp_path):
    root = tmp_path / "synth"
    spec = write_synthetic_dataset("synthetic", root)
    yield spec, root
    data_mod.DATASETS.pop("synthetic", None)


def shared_paths() -> tuple[Path, Path] | None:
    camvid, weights = os.environ.get("ACSEG_CAMVID_DIR"), os.environ.get("ACSEG_WEIGHTS_DIR")
    if not camvid or not weights or not Path(camvid).is_dir() or not (Path(weights) / WEIGHTS_FILE).is_file():
        return None
    return Path(camvid), Path(weights)


requires_shared = pytest.mark.skipif(shared_paths() is None, reason="ACSEG_CAMVID_DIR / ACSEG_WEIGHTS_DIR not set")


@pytest.fixture(scope="session")
def mini_camvid(tmp_path_factory):
    """8 real CamVid train and 4 val images (with labels) as a registered dataset `camvid_mini`."""
    paths = shared_paths()
    if paths is None:
        pytest.skip("ACSEG_CAMVID_DIR / ACSEG_WEIGHTS_DIR not set")
    camvid, _ = paths
    root = tmp_path_factory.mktemp("mini") / "CamVid"
    splits = {"train": sorted(os.listdir(camvid / "train"))[::46][:8], "val": sorted(os.listdir(camvid / "val"))[::25][:4]}
    for split, names in splits.items():
        for folder in (split, split + "annot"):
            (root / folder).mkdir(parents=True)
            for n in names:
                shutil.copy(camvid / folder / n, root / folder / n)
    spec = register_dataset("camvid_mini", root, splits)
    yield spec, root
    data_mod.DATASETS.pop("camvid_mini", None)
