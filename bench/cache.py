"""The feature cache: backbone features computed once per (data, split, backbone, weights, feature type, resolution)
and reused by every run that shares them.

An entry is a folder holding ``features.safetensors`` and ``meta.json``. Its identity (the meta) names the data it
was made from, by the split's fingerprint in the fetch record (``data/<dataset>.json``, a digest over the content
of every image and label of the split), so other data under the same name is never served from it. It is written
under a temporary name and renamed into place only when complete, so an interrupted run never leaves an entry that
reads as valid; an entry whose meta does not match what is asked for is recomputed. The meta records the size and
blake3 digest of the tensor file, checked before the file is used: the size on every use, the digest once per
process (a corrupt entry is a :class:`CacheError` naming it, never a number).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from bench.backbones import weights_tag
from bench.config import Config
from bench.data import dataset_spec, locate, recorded_fingerprint

# 3: the identity names the data's fingerprint, the meta the file's digest; 2: no digests; 1: [N, h, w, d] tensors
FORMAT_VERSION = 3
FEATURES_FILE = "features.safetensors"
_DIGEST_BLOCK = 1 << 22  # read 4 MB at a time: memory stays flat whatever the entry's size


class CacheError(RuntimeError):
    """A cache entry whose file does not match its recorded size or digest (truncated, altered, overwritten)."""


def weights_dir(cfg: Config, split: str) -> Path:
    """<cache_dir>/<dataset>/<split>/<backbone>/<weights>: every entry of one split and one backbone's weights.

    The folder dvc.yaml names as the features stage's output (tests/bench/test_dvc_pipeline.py keeps the two in
    step); the weights' checksum is in each entry's meta."""
    return Path(cfg.features.cache_dir) / cfg.data.dataset / split / cfg.backbone.name / cfg.backbone.weights


def cache_dir(cfg: Config, split: str) -> Path:
    """One entry: <weights_dir>/<type>-<H>x<W>[-aspect] (-aspect: data.keep_aspect, every image its own grid)."""
    f = cfg.features
    return weights_dir(cfg, split) / f"{f.type}-{f.height}x{f.width}{'-aspect' if cfg.data.keep_aspect else ''}"


def expected_meta(cfg: Config, split: str, data_split: str | None = None) -> dict:
    """The identity of the entry of ``split`` (a split, or a view of one such as its five crops: then
    ``data_split`` names the split whose images it encodes)."""
    return {
        "format": FORMAT_VERSION,
        "dataset": cfg.data.dataset,
        "split": split,
        "data_fingerprint": data_fingerprint(cfg, data_split or split),
        "backbone": cfg.backbone.name,
        "weights": weights_tag(cfg.backbone),
        "feature_type": cfg.features.type,
        "height": cfg.features.height,
        "width": cfg.features.width,
        "keep_aspect": cfg.data.keep_aspect,
    }


def data_fingerprint(cfg: Config, split: str) -> str:
    """The split's fingerprint in the fetch record; where there is no record (the library used without
    `acseg-bench fetch`), computed from the files themselves, once per process."""
    recorded = recorded_fingerprint(cfg.data.dataset, split)
    if recorded is not None:
        return recorded
    spec = dataset_spec(cfg)
    root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
    try:
        files = [Path(root) / rel for s in spec.samples(root, split) for rel in (s.image, s.label)]
        key = (spec.name, split, tuple((str(f.resolve()), st.st_size, st.st_mtime_ns) for f in files
                                       for st in [f.stat()]))
    except OSError:
        spec.verify(root)  # names what is missing
        raise
    if key not in _computed:  # hashed again only when a file changed (its size or time)
        spec.verify(root)  # first: datasets with a manifest take their digests from the one it checks
        _computed[key] = spec.fingerprints(root, [split], progress=False)[split]
    return _computed[key]


_computed: dict[tuple, str] = {}  # fingerprints computed without a fetch record, by the files' paths, sizes, times


def lock(path: Path):
    """An inter-process lock for one cache entry (a ``.lock`` file beside it), held while it is computed."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.parent / f".{path.name}.lock"))


def matches(path: Path, meta: dict, filename: str = FEATURES_FILE) -> bool:
    """An entry written for exactly this key (its content not yet checked: :func:`check`)."""
    try:
        stored = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (path / filename).is_file() and all(stored.get(k) == v for k, v in meta.items())


def is_valid(path: Path, meta: dict, filename: str = FEATURES_FILE) -> bool:
    """A complete entry written for exactly this key whose file is intact."""
    if not matches(path, meta, filename):
        return False
    try:
        check(path, filename)
    except CacheError:
        return False
    return True


def file_digest(path: Path) -> str:
    """The blake3 digest of a file, read a block at a time into one reused buffer (no copy per block: twice as fast
    as ``f.read``, and memory stays flat, unlike a mapping of the file)."""
    import blake3

    digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
    block = bytearray(_DIGEST_BLOCK)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()


# (path, size, mtime_ns, digest) of the files this process has already checked: one digest per file and process
_checked: set[tuple[str, int, int, str]] = set()


def check(path: Path, filename: str = FEATURES_FILE, rebuild: str = "") -> None:
    """Raise :class:`CacheError` unless the entry's file has the size and digest its meta records (the size every
    time, the digest once per process). ``rebuild``: the command that makes the entry again, for the message."""
    file = path / filename
    how = f": {rebuild}" if rebuild else ": delete it to have it computed again"
    try:
        content = read_meta(path).get("content") or {}
        stat = file.stat()
    except (OSError, ValueError) as e:
        raise CacheError(f"feature cache entry {path} is unreadable ({e}){how}") from None
    if content.get("file") != filename or "blake3" not in content:
        raise CacheError(f"feature cache entry {path} records no digest of {filename}{how}")
    if stat.st_size != content["bytes"]:
        raise CacheError(f"feature cache entry {path} is corrupt: {filename} has {stat.st_size} bytes, its meta "
                         f"records {content['bytes']} (truncated or overwritten){how}")
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, content["blake3"])
    if key in _checked:
        return
    if file_digest(file) != content["blake3"]:
        raise CacheError(f"feature cache entry {path} is corrupt: the content of {filename} does not match the "
                         f"digest in its meta{how}")
    _checked.add(key)


def write_entry(path: Path, tensors: dict[str, torch.Tensor], meta: dict, filename: str = FEATURES_FILE) -> None:
    """Atomically publish a cache entry (temp folder + rename), its meta recording the file's size and digest;
    replaces an invalid older entry."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / filename))
        stat = (tmp / filename).stat()
        content = {"file": filename, "bytes": stat.st_size, "blake3": file_digest(tmp / filename)}
        (tmp / "meta.json").write_text(json.dumps({**meta, "content": content}, indent=2, sort_keys=True) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def read_entry(path: Path, filename: str = FEATURES_FILE,
               rebuild: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """The entry's tensors and meta, its file checked first (:func:`check`)."""
    from safetensors.torch import load_file

    check(path, filename, rebuild)
    return load_file(str(path / filename)), read_meta(path)
