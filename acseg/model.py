"""ACSeg at inference: features -> concepts -> pixel-to-concept assignment -> concept classes -> pixel classes.

Every pixel takes the class of the concept it is assigned to (no pixel-level clustering): the cosine maps of
the concepts an image actually uses are upsampled to the label resolution, the argmax picks each pixel's
concept, and the concept's class comes from the concept classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from acseg.assignment import channel_argmax, concepts_per_image, cosine_assignment, hard_assignment
from acseg.classifier import background_concepts, classify_concepts, region_embeddings
from acseg.concept_generator import ConceptGenerator
from acseg.features import centred_pixels


@dataclass
class Segmentation:
    classes: torch.Tensor  # [B, H, W] class id per pixel (at the requested resolution)
    concepts: torch.Tensor  # [B, H, W] concept id per pixel
    patch_concepts: torch.Tensor  # [B, h, w] concept id per patch
    concept_classes: torch.Tensor  # [B, k] class of each concept (-1 where the concept wins no patch)
    n_concepts: torch.Tensor  # [B] concepts used per image (the adaptive count)
    concept_scores: torch.Tensor  # [B, k, H, W] upsampled cosine maps (-2 where a concept wins no patch)


class ACSeg(nn.Module):
    """The trained pieces: feature centring, the concept generator, and the classifier's class centroids.

    ``background=True`` (VOC): class ``n_classes - 1`` is background, given to the concepts of the low cluster of
    the per-image [CLS]-attention 2-means; the ``n_classes - 1`` centroids classify the other concepts.
    """

    def __init__(self, generator: ConceptGenerator, feature_mean: torch.Tensor, n_classes: int, cosine: bool = True,
                 raw_regions: bool = False, background: bool = False, region_dim: int | None = None):
        super().__init__()
        self.generator = generator
        self.register_buffer("feature_mean", feature_mean.float())
        # region_dim: the classifier's embedding width when it reads other embeddings than the region means
        self.register_buffer("class_centroids", torch.zeros(n_classes - int(background),
                                                            region_dim or feature_mean.shape[-1]))
        self.cosine = cosine
        self.raw_regions = raw_regions  # region means of the raw features instead of the centred ones
        self.background = background

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        """[B, h, w, d] cached features -> [B, n, d] float, centred."""
        return centred_pixels(features, self.feature_mean)

    def assign(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prepared pixels [B, n, d], similarity S [B, n, k])."""
        x = self.prepare(features)
        return x, cosine_assignment(x, self.generator(x))

    def regions(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Region-mean embedding of every concept: (embeddings [B, k, d], counts [B, k], similarity [B, n, k])."""
        x, s = self.assign(features)
        if self.raw_regions:
            x = x + self.feature_mean
        emb, counts = region_embeddings(x, hard_assignment(s), self.generator.n_prototypes)
        return emb, counts, s

    def forward(self, features: torch.Tensor, out_size: tuple[int, int],
                cls_attention: torch.Tensor | None = None,
                region_embeddings: torch.Tensor | None = None) -> Segmentation:
        """features [B, h, w, d]; cls_attention [B, heads, h, w] (needed with the background split);
        region_embeddings [B, k, d]: what the classifier sees of each concept instead of its region mean (the
        re-encoded crops of docs/methods/acseg.md step 5a, made by the caller, who has the images and the backbone)."""
        b, h, w, _ = features.shape
        emb, counts, s = self.regions(features)
        if region_embeddings is not None:
            emb = region_embeddings
        present = counts > 0
        concept_classes = classify_concepts(emb, self.class_centroids, self.cosine).masked_fill(~present, -1)
        if self.background:
            if cls_attention is None:
                raise ValueError("the background split needs the [CLS] attention of the images")
            is_background = background_concepts(cls_attention, hard_assignment(s), self.generator.n_prototypes)
            concept_classes = concept_classes.masked_fill(is_background, self.class_centroids.shape[0])
        # Upsample the cosine maps of the concepts in use; concepts that win no patch cannot win a pixel.
        maps = s.transpose(1, 2).reshape(b, -1, h, w).masked_fill(~present[:, :, None, None], -2.0)
        maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
        pixel_concepts = channel_argmax(maps)
        classes = torch.gather(concept_classes, 1, pixel_concepts.flatten(1)).reshape(pixel_concepts.shape)
        return Segmentation(
            classes=classes,
            concepts=pixel_concepts,
            patch_concepts=hard_assignment(s).reshape(b, h, w),
            concept_classes=concept_classes,
            n_concepts=concepts_per_image(hard_assignment(s), self.generator.n_prototypes),
            concept_scores=maps,
        )
