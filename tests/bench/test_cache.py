import json

import pytest
import torch

from bench import cache


def test_entry_roundtrip_and_key_check(tmp_path):
    path = tmp_path / "entry"
    meta = {"format": cache.FORMAT_VERSION, "split": "val"}
    cache.write_entry(path, {"features": torch.ones(2, 3)}, meta)
    assert cache.is_valid(path, meta)
    assert not cache.is_valid(path, {**meta, "split": "train"})  # written for another key
    tensors, stored = cache.read_entry(path)
    assert torch.equal(tensors["features"], torch.ones(2, 3)) and stored.items() >= meta.items()
    assert stored["content"]["bytes"] == (path / "features.safetensors").stat().st_size


def test_interrupted_write_leaves_no_valid_entry(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "entry"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.write_entry(path, {"features": torch.ones(1)}, {"format": 1})
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_half_written_folder_is_not_valid(tmp_path):
    path = tmp_path / "entry"
    path.mkdir()
    (path / "features.safetensors").write_bytes(b"partial")
    assert not cache.is_valid(path, {"format": 1})


def test_streamed_rows_read_exactly_the_rows_asked_for(tmp_path):
    """Evaluation reads features a block of rows at a time (memory flat in the split size): same values."""
    import torch

    from bench.cache import write_entry
    from bench.features import StreamedRows

    feats = torch.randn(7, 2, 3, 4).half()
    write_entry(tmp_path / "entry", {"features": feats, "cls_attention": torch.zeros(7, 1, 2, 3).half()}, {})
    rows = StreamedRows(tmp_path / "entry" / "features.safetensors", "features")
    assert rows.shape == (7, 2, 3, 4) and len(rows) == 7
    assert torch.equal(rows[2:5], feats[2:5]) and torch.equal(rows[:], feats)
    with pytest.raises(TypeError, match="row ranges"):
        rows[torch.tensor([0, 3])]


def _entry(tmp_path):
    path = tmp_path / "entry"
    cache.write_entry(path, {"features": torch.arange(4096, dtype=torch.float32).reshape(64, 64)}, {"split": "val"})
    return path, path / "features.safetensors"


def test_a_truncated_entry_is_detected_by_its_size_and_named(tmp_path):
    path, file = _entry(tmp_path)
    file.write_bytes(file.read_bytes()[:100])
    assert cache.matches(path, {"split": "val"}) and not cache.is_valid(path, {"split": "val"})
    with pytest.raises(cache.CacheError, match=f"entry {path} is corrupt: features.safetensors has 100 bytes.*rebuild"):
        cache.read_entry(path, rebuild="rebuild it")


def test_a_bit_flipped_entry_of_the_same_size_is_detected_by_its_digest(tmp_path):
    path, file = _entry(tmp_path)
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x80  # the sign bit of the last float: a plausible value, the same size
    file.write_bytes(bytes(data))
    with pytest.raises(cache.CacheError, match="does not match the digest"):
        cache.check(path)
    assert not cache.is_valid(path, {"split": "val"})


def test_an_entry_is_hashed_once_per_process_and_again_once_its_file_changes(tmp_path, monkeypatch):
    path, file = _entry(tmp_path)
    calls = []
    digest = cache.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda p: calls.append(p) or digest(p))
    cache.check(path)
    cache.check(path)
    assert len(calls) == 1
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x80
    file.write_bytes(bytes(data))  # a new modification time: checked again
    with pytest.raises(cache.CacheError):
        cache.check(path)
    assert len(calls) == 2


def test_an_entry_without_a_recorded_digest_is_not_used(tmp_path):
    """Entries of format 2 recorded no digest: they are made again, never read unchecked."""
    path, _ = _entry(tmp_path)
    meta = cache.read_meta(path)
    del meta["content"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(cache.CacheError, match="records no digest"):
        cache.check(path)
