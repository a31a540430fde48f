import pytest
import timm
import torch

from acseg.features import ViTFeatures


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True,
                             embed_dim=32, depth=2, num_heads=2, img_size=56)


def test_tokens_and_keys_shapes(tiny_vit):
    images = torch.rand(2, 3, 28, 42)
    for kind in ("tokens", "keys"):
        out = ViTFeatures(tiny_vit, kind)(images)
        assert out["features"].shape == (2, 2, 3, 32)
        assert out["cls"].shape == (2, 32)
        assert out["cls_attention"].shape == (2, 2, 2, 3)
        assert (out["cls_attention"] >= 0).all() and (out["cls_attention"].sum((-1, -2)) <= 1 + 1e-5).all()


def test_tokens_match_timm_forward(tiny_vit):
    images = torch.rand(1, 3, 28, 28)
    ext = ViTFeatures(tiny_vit, "tokens")
    ref = tiny_vit.forward_features((images - ext.mean) / ext.std)[:, tiny_vit.num_prefix_tokens:]
    assert torch.allclose(ext(images)["features"].reshape(1, 4, 32), ref, atol=1e-5)


def test_keys_are_the_last_blocks_keys(tiny_vit):
    images = torch.rand(1, 3, 28, 28)
    ext = ViTFeatures(tiny_vit, "keys")
    x = tiny_vit.patch_embed((images - ext.mean) / ext.std)
    x = tiny_vit._pos_embed(x)
    x = tiny_vit.norm_pre(x)
    for blk in tiny_vit.blocks[:-1]:
        x = blk(x)
    qkv = tiny_vit.blocks[-1].attn.qkv(tiny_vit.blocks[-1].norm1(x))
    keys = qkv[..., 32:64][:, tiny_vit.num_prefix_tokens:]
    assert torch.allclose(ext(images)["features"].reshape(1, 4, 32), keys, atol=1e-5)


def test_size_not_multiple_of_patch_is_an_error(tiny_vit):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        ViTFeatures(tiny_vit)(torch.rand(1, 3, 30, 28))


def test_unknown_feature_type(tiny_vit):
    with pytest.raises(ValueError, match="unknown feature type"):
        ViTFeatures(tiny_vit, "values")
