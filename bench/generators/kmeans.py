"""Per-image k-means: each image's centred features clustered into k concepts (the paper's comparison)."""

from __future__ import annotations

from pydantic import Field

from acseg.features import centred_pixels
from acseg.generators import kmeans_concepts
from bench.config import Section
from bench.generators.base import ConceptGenerator, ConceptStep, or_prototypes, register_generator


class KMeansGeneratorConfig(Section):
    k: int = Field(ge=0, description="segments per image; 0: acseg.prototypes")
    n_init: int = Field(ge=1)
    iters: int = Field(ge=1)


class KMeansGenerator(ConceptGenerator):
    name = "kmeans"
    title = "per-image k-means"
    config = KMeansGeneratorConfig

    def build(self, cfg, settings, seed, device, feature_mean):
        s, mean = settings.kmeans, feature_mean.to(device)
        k = or_prototypes(s.k, cfg)
        return ConceptStep(lambda f: kmeans_concepts(centred_pixels(f, mean), min(k, f.shape[1] * f.shape[2]), seed,
                                                     s.iters, s.n_init), k, mean)


register_generator(KMeansGenerator())
