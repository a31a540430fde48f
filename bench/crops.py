"""The crop variant of ACSeg's concept classifier input (docs/methods/acseg.md step 5a, ``classifier.regions=crops``).

Each concept's bounding box is cropped from the image (at the feature resolution, the pixels the cached features
were computed from), resized to ``classifier.crop_size`` and re-encoded by the backbone; its [CLS] token stands
for the region. The boxes and crops are :mod:`acseg.classifier`'s; this module owns the images on disk and the
backbone. It costs one backbone pass per concept (about 9 per CamVid image), so it is an ablation point, not
the default.
"""

from __future__ import annotations

import torch

from acseg.assignment import hard_assignment
from acseg.classifier import concept_boxes, crop_boxes
from acseg.features import ViTFeatures
from bench.backbones import get_backbone_spec, load_backbone
from bench.config import Config
from bench.data import SegmentationSplit, dataset_spec, locate, resize_image


class CropEncoder:
    """(ACSeg model, cached features [B, h, w, d], image names) -> [CLS] of each concept's crop [B, k, D]
    (zeros where a concept wins no patch)."""

    def __init__(self, cfg: Config, split: str, device: torch.device):
        self.patch = get_backbone_spec(cfg.backbone.name).patch_size
        self.size = cfg.acseg.classifier.crop_size
        if self.size % self.patch:
            raise ValueError(f"invalid parameter acseg.classifier.crop_size={self.size}: must be a multiple of the patch "
                             f"size {self.patch} of {cfg.backbone.name}")
        spec = dataset_spec(cfg)
        root = locate(spec, cfg.data.local_copy, cfg.data.download_dir)
        self.images = SegmentationSplit(spec, root, split, with_labels=False)
        self.index = {name: i for i, name in enumerate(self.images.names)}
        vit, self.weights_sha256 = load_backbone(cfg.backbone)
        self.extractor = ViTFeatures(vit).to(device)
        self.device = device
        self.batch_size = max(1, cfg.features.batch_size)

    def image_batch(self, names: list[str], size: tuple[int, int]) -> torch.Tensor:
        """The named images resized to ``size`` (the pixels of their patch grid), [B, 3, H, W] in [0, 1]."""
        missing = [n for n in names if n not in self.index]
        if missing:
            raise KeyError(f"images {missing[:3]} of the cached features are not in split {self.images.split!r}")
        return torch.stack([resize_image(self.images[self.index[n]][0], size) for n in names])

    def __call__(self, model, features: torch.Tensor, names: list[str]) -> torch.Tensor:
        size = (features.shape[1] * self.patch, features.shape[2] * self.patch)
        return crop_embeddings(model, self.extractor, features, self.image_batch(names, size).to(self.device),
                               self.patch, self.size, self.batch_size)


@torch.no_grad()
def crop_embeddings(model, extractor, features: torch.Tensor, images: torch.Tensor, patch: int, size: int,
                    batch_size: int = 4) -> torch.Tensor:
    """The [CLS] of every concept's re-encoded crop, [B, k, D] (zeros where a concept wins no patch).

    model: a trained :class:`acseg.model.ACSeg`; extractor: :class:`acseg.features.ViTFeatures`; features
    [B, h, w, d] cached; images [B, 3, h * patch, w * patch] in [0, 1], the pixels the features came from."""
    b, h, w, _ = features.shape
    k = model.generator.n_prototypes
    if tuple(images.shape[-2:]) != (h * patch, w * patch):
        raise ValueError(f"images of {tuple(images.shape[-2:])} do not match the {h}x{w} patch grid of the "
                         f"features (patch size {patch})")
    _, similarity = model.assign(features)
    boxes, present = concept_boxes(hard_assignment(similarity).reshape(b, h, w), k)
    crops = crop_boxes(images, boxes.to(images.device), patch, size)[present.to(images.device)]  # [M, 3, s, s]
    cuda = images.device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        cls = [extractor(part)["cls"].float() for part in crops.split(batch_size)]
    out = torch.zeros(b, k, extractor.dim, device=features.device)
    out[present] = torch.cat(cls).to(features.device)
    return out
