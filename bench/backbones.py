"""A registry of named self-supervised ViT backbones, and loading their weights (hub, verified file, random).

timm builds the architecture; weights come from (a) the Hugging Face hub for users online, (b) a local file
verified against the sha256 in the params, or (c) nowhere (``random``, the control). Every way ends in the
same place: a file (or a seeded random init) whose checksum is recorded with every result.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import BackboneConfig
from bench.data import sha256_file


class WeightsError(RuntimeError):
    """Missing, unverifiable or unloadable backbone weights; the message says how to get them."""


@dataclass(frozen=True)
class BackboneSpec:
    title: str
    patch_size: int
    dim: int


BACKBONES: dict[str, BackboneSpec] = {
    "vit_small_patch14_dinov2.lvd142m": BackboneSpec("DINOv2 ViT-S/14", 14, 384),
    "vit_base_patch14_dinov2.lvd142m": BackboneSpec("DINOv2 ViT-B/14", 14, 768),
    "vit_small_patch8_224.dino": BackboneSpec("DINO ViT-S/8", 8, 384),
    "vit_small_patch16_224.dino": BackboneSpec("DINO ViT-S/16", 16, 384),
    "vit_base_patch8_224.dino": BackboneSpec("DINO ViT-B/8", 8, 768),
    "vit_base_patch16_224.dino": BackboneSpec("DINO ViT-B/16", 16, 768),
}

HOW_TO_GET = (
    "with internet, set backbone.weights=hub (timm downloads the official weights); offline, put the file in "
    "$ACSEG_WEIGHTS_DIR (or backbone.weights_dir) or give its path in backbone.weights, with its sha256 in "
    "backbone.weights_sha256"
)


def get_backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise WeightsError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name]


def weights_tag(cfg: BackboneConfig) -> str:
    """What identifies the weights in cache keys and results: the checksum of the file, of the random network, or
    'hub'."""
    if cfg.weights == "random":
        return random_weights(cfg.name)[1]
    return cfg.weights_sha256 or "hub"


def weights_label(cfg: BackboneConfig) -> str:
    if cfg.weights_label:
        return cfg.weights_label
    title = get_backbone_spec(cfg.name).title
    return f"{title} (random weights)" if cfg.weights == "random" else f"{title} ({cfg.weights} weights)"


def resolve_weights_file(cfg: BackboneConfig) -> Path:
    """The verified weights file for cfg (downloading it from the hub if asked to)."""
    if cfg.weights == "hub":
        path = _download_from_hub(cfg.name)
    else:
        candidates = [Path(cfg.weights).expanduser()]
        if cfg.weights_dir and not Path(cfg.weights).is_absolute():
            candidates.append(Path(cfg.weights_dir).expanduser() / cfg.weights)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            looked = ", ".join(str(c) for c in candidates)
            raise WeightsError(f"backbone weights file {cfg.weights!r} not found (looked at: {looked}). "
                               f"To get it: {HOW_TO_GET}")
    if cfg.weights_sha256:
        actual = sha256_file(path)
        if actual != cfg.weights_sha256:
            raise WeightsError(
                f"backbone weights {path} have sha256 {actual}, but backbone.weights_sha256 is "
                f"{cfg.weights_sha256}: the file is corrupt or not the one the params name. To get it: {HOW_TO_GET}"
            )
    return path


def _download_from_hub(name: str) -> Path:
    import timm
    from huggingface_hub import hf_hub_download

    pretrained = timm.models.get_pretrained_cfg(name)
    if pretrained is None or not getattr(pretrained, "hf_hub_id", None):
        raise WeightsError(f"timm knows no hub weights for {name!r}. {HOW_TO_GET}")
    try:
        return Path(hf_hub_download(pretrained.hf_hub_id, filename="model.safetensors"))
    except Exception as e:  # noqa: BLE001 (network stacks raise many types)
        raise WeightsError(f"could not download the weights of {name} from the hub ({type(e).__name__}: {e}). "
                           f"Offline: {HOW_TO_GET}") from e


def create_vit(name: str) -> torch.nn.Module:
    """The timm architecture, any input size that is a multiple of the patch size, no head."""
    import timm

    get_backbone_spec(name)
    return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)


@functools.cache
def random_weights(name: str) -> tuple[torch.nn.Module, str]:
    """The random control of ``name`` (timm's initialisation from seed 0: one fixed network, not a new one per run)
    and its checksum. Its values depend on the process's float arithmetic (oneMKL's code branch rounds the
    initialisers' erfinv differently), so the checksum, not the word 'random', identifies it in cache keys."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vit = create_vit(name)
    digest = hashlib.sha256()
    for k, v in sorted(vit.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    return vit, "random-" + digest.hexdigest()


def load_backbone(cfg: BackboneConfig) -> tuple[torch.nn.Module, str]:
    """(timm ViT with the configured weights, weights checksum)."""
    if cfg.weights == "random":
        vit, digest = random_weights(cfg.name)
        return copy.deepcopy(vit), digest
    path = resolve_weights_file(cfg)
    # Built on the meta device: timm's random initialisation (most of the load's time) would be overwritten by the
    # file anyway. The file's tensors are taken as they are (assign), cast to the parameters' dtypes first, as
    # load_state_dict's copy would: the same model bit for bit (tests/bench/test_backbones.py).
    with torch.device("meta"):
        vit = create_vit(cfg.name)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state.get("state_dict", state))
    expected = vit.state_dict()
    try:
        vit.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()},
                            strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"weights {path} do not fit {cfg.name}: {str(e).splitlines()[0]}") from e
    if any(t.is_meta for t in [*vit.parameters(), *vit.buffers()]):  # tensors no file gives (non-persistent
        vit = create_vit(cfg.name)                                         # buffers): built for real then
        vit.load_state_dict(state, strict=True)
    return vit, sha256_file(path)
