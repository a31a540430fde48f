import pytest
import torch

from bench.backbones import WeightsError, load_backbone, resolve_weights_file
from bench.config import BackboneConfig
from tests.conftest import WEIGHTS_FILE, WEIGHTS_SHA256, make_config, requires_shared, shared_paths


def backbone(**values) -> BackboneConfig:
    """The params' backbone section with some values changed."""
    return BackboneConfig(**{**make_config(tiny=False).backbone.model_dump(), **values})


def test_missing_weights_file_says_how_to_get_it(tmp_path):
    cfg = backbone(weights="nope.safetensors", weights_sha256="0" * 64, weights_dir=str(tmp_path))
    with pytest.raises(WeightsError, match=r"'nope.safetensors' not found.*To get it: with internet"):
        resolve_weights_file(cfg)


def test_wrong_checksum_is_an_error(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"corrupt")
    cfg = backbone(weights="w.safetensors", weights_sha256="0" * 64, weights_dir=str(tmp_path))
    with pytest.raises(WeightsError, match="have sha256 .* but backbone.weights_sha256 is 000"):
        resolve_weights_file(cfg)


def test_unknown_backbone_is_an_error():
    with pytest.raises(WeightsError, match="unknown backbone 'vit_huge'"):
        load_backbone(backbone(name="vit_huge", weights="random", weights_sha256=None))


@pytest.mark.parametrize("name", ["vit_small_patch16_224.dino", "vit_small_patch8_224.dino"])
def test_random_control_is_fixed(name):
    a, sha_a = load_backbone(backbone(name=name, weights="random", weights_sha256=None))
    b, sha_b = load_backbone(backbone(name=name, weights="random", weights_sha256=None))
    assert sha_a == sha_b and sha_a.startswith("random-")
    assert torch.equal(a.pos_embed, b.pos_embed)


@requires_shared
def test_real_weights_load_strictly():
    _, weights_dir = shared_paths()
    vit, sha = load_backbone(backbone(weights=WEIGHTS_FILE, weights_sha256=WEIGHTS_SHA256,
                                            weights_dir=str(weights_dir)))
    assert sha == WEIGHTS_SHA256
    assert sum(p.numel() for p in vit.parameters()) == 22_056_192


def test_hub_failure_says_how_to_work_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match="could not download the weights of .* Offline: .*ACSEG_WEIGHTS_DIR"):
        resolve_weights_file(backbone(weights="hub", weights_sha256=None))


@requires_shared
def test_the_backbone_built_on_the_meta_device_is_the_one_built_for_real():
    from safetensors.torch import load_file

    from bench.backbones import create_vit, load_backbone, resolve_weights_file

    _, weights_dir = shared_paths()
    cfg = make_config(**{"backbone.weights": WEIGHTS_FILE, "backbone.weights_sha256": WEIGHTS_SHA256,
                         "backbone.weights_dir": str(weights_dir)})
    vit, checksum = load_backbone(cfg.backbone)
    reference = create_vit(cfg.backbone.name)  # the old way: random init, then the file copied in
    reference.load_state_dict(load_file(str(resolve_weights_file(cfg.backbone))), strict=True)
    assert checksum == WEIGHTS_SHA256
    mine, theirs = vit.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), k
    assert not any(t.is_meta for t in [*vit.parameters(), *vit.buffers()])
    images = torch.rand(2, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(vit.eval().forward_features(images), reference.eval().forward_features(images))
