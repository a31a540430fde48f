"""Per-image spectral clustering: k-means on the eigenvectors of the image's feature-affinity Laplacian."""

from __future__ import annotations

from pydantic import Field

from acseg.features import centred_pixels
from acseg.generators import spectral_concepts
from bench.config import Section
from bench.generators.base import ConceptGenerator, ConceptStep, eigh_flops, or_prototypes, register_generator


class SpectralGeneratorConfig(Section):
    segments: int = Field(ge=0, description="segments per image; 0: acseg.prototypes")
    eigenvectors: int = Field(ge=0, description="eigenvectors of the Laplacian; 0: as many as segments")
    normalised: bool
    n_init: int = Field(ge=1)
    iters: int = Field(ge=1)


class SpectralGenerator(ConceptGenerator):
    name = "spectral"
    title = "per-image spectral clustering"
    config = SpectralGeneratorConfig

    def build(self, cfg, settings, seed, device, feature_mean):
        s, mean = settings.spectral, feature_mean.to(device)
        k = or_prototypes(s.segments, cfg)
        vectors = s.eigenvectors or k

        def assign(f):
            n = f.shape[1] * f.shape[2]
            return spectral_concepts(centred_pixels(f, mean), min(k, n), min(vectors, n), seed, s.iters, s.n_init,
                                     s.normalised)

        return ConceptStep(assign, k, mean, eigh_flops)


register_generator(SpectralGenerator())
