"""Per-image k-means with k chosen per image without labels (Newman's modularity or the Laplacian's eigengap)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from acseg.features import centred_pixels
from acseg.generators import adaptive_kmeans_concepts
from bench.config import Section
from bench.generators.base import ConceptGenerator, ConceptStep, eigh_flops, or_prototypes, register_generator


class AdaptiveKMeansGeneratorConfig(Section):
    k_min: int = Field(ge=1)
    k_max: int = Field(ge=0, description="0: acseg.prototypes")
    criterion: Literal["modularity", "eigengap"] = Field(
        description="the label-free choice of k per image: Newman's Q of the partition, or the Laplacian's eigengap")
    n_init: int = Field(ge=1)
    iters: int = Field(ge=1)


class AdaptiveKMeansGenerator(ConceptGenerator):
    name = "kmeans_adaptive"
    title = "per-image k-means, adaptive k"
    config = AdaptiveKMeansGeneratorConfig

    def build(self, cfg, settings, seed, device, feature_mean):
        s, mean = settings.kmeans_adaptive, feature_mean.to(device)
        k_max = or_prototypes(s.k_max, cfg)
        if s.k_min > k_max:
            raise ValueError(f"generators.kmeans_adaptive: k_min={s.k_min} > k_max={k_max}")

        def assign(f):
            n = f.shape[1] * f.shape[2]
            return adaptive_kmeans_concepts(centred_pixels(f, mean), min(s.k_min, n), min(k_max, n), s.criterion,
                                            seed, s.iters, s.n_init)

        extra = eigh_flops if s.criterion == "eigengap" else (lambda n: 0.0)
        return ConceptStep(assign, k_max, mean, extra)


register_generator(AdaptiveKMeansGenerator())
