"""What a concept generator declares, and their registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from bench.config import Config, ConfigError, GeneratorsConfig, Section
from bench.registry import Registry


def eigh_flops(n: int) -> float:
    """An estimate of one symmetric n x n eigendecomposition with eigenvectors: ~9 n^3 (Golub & Van Loan,
    tridiagonalisation plus implicit QR with the vectors accumulated). FlopCounterMode does not count it."""
    return 9.0 * n ** 3


@dataclass
class ConceptStep:
    """A generator ready to run: cached features [B, h, w, d] -> concept id of each patch [B, h * w] in [0, slots)."""

    assign: Callable[[torch.Tensor], torch.Tensor]
    slots: int  # an upper bound on the ids
    feature_mean: torch.Tensor  # what the step subtracts from the features (the region embeddings start from it)
    uncounted_flops: Callable[[int], float] = field(default=lambda n: 0.0)  # per image of n patches


class ConceptGenerator:
    """One concept generator of the study; subclasses are registered with :func:`register_generator`. Its settings
    (``config``, a section of its own) are ``generators.<name>`` in the params."""

    name: str = ""
    title: str = ""
    config: type[Section] | None = None

    def build(self, cfg: Config, settings: GeneratorsConfig, seed: int, device: torch.device,
              feature_mean: torch.Tensor) -> ConceptStep:
        """The step for ``seed``. ``feature_mean``: the training split's mean feature (zeros unless acseg.centre),
        what ACSeg's concept step subtracts, so every generator sees its input."""
        raise NotImplementedError


GENERATORS: Registry[ConceptGenerator] = Registry("concept generator", ConfigError)
register_generator = GENERATORS.register
get_generator = GENERATORS.lookup


def generator_title(name: str) -> str:
    return GENERATORS[name].title if name in GENERATORS else name


def or_prototypes(value: int, cfg: Config) -> int:
    return value or cfg.acseg.prototypes
