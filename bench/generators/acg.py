"""ACSeg's Adaptive Concept Generator: the concept step of ACSeg's trained model of the same seed
(``runs/<dataset>/acseg/seed<N>/model.pt``, trained by the benchmark). It has no settings of its own."""

from __future__ import annotations

from acseg.generators import acg_concepts
from bench.generators.base import ConceptGenerator, ConceptStep, register_generator
from bench.store import load_fitted


def acg_step(model) -> ConceptStep:
    """The concept step of a trained :class:`acseg.model.ACSeg` (its own centring, its own prototypes). Its
    parameters are frozen: inference only, and torch's FlopCounterMode fails on modules whose parameters require
    gradients under no_grad."""
    model.requires_grad_(False)
    return ConceptStep(lambda f: acg_concepts(model.generator, model.prepare(f)), model.generator.n_prototypes,
                       model.feature_mean)


class ACGGenerator(ConceptGenerator):
    name = "acg"
    title = "ACSeg's ACG"

    def build(self, cfg, settings, seed, device, feature_mean):
        return acg_step(load_fitted(cfg, "acseg", seed, device)[0])


register_generator(ACGGenerator())
