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
    assert torch.equal(tensors["features"], torch.ones(2, 3)) and stored == meta


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
