"""The composed configuration: the common sections of :mod:`bench.config`, one section per registered method and
one per registered concept generator, and the checks that need the registries (names of datasets, methods and
generators; a method's checks against its dataset).

A method or a concept generator declares its own section (a pydantic model beside its code) and registers itself;
this module assembles the schema from the registries, so nothing else lists them. A params file is read by
:func:`load_config`, the one entry point of every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from bench import config
from bench.config import ConfigError, read_params, validated
from bench.datasets import DATASETS
from bench.generators import GENERATORS
from bench.methods import METHODS

__all__ = ["Config", "GeneratorsConfig", "check_names", "load_config", "schema"]

_composed: dict[tuple, type[config.Config]] = {}


def schema() -> type[config.Config]:
    """The schema of the registered methods and generators (composed once per set of registered sections). It is
    bound to ``bench.schema.Config``, where pickle finds it (configs travel to worker processes and Slurm jobs)."""
    methods = {name: m.config for name, m in METHODS.items() if m.config is not None}
    generators = {name: g.config for name, g in GENERATORS.items() if g.config is not None}
    key = (tuple(methods.items()), tuple(generators.items()))
    if key not in _composed:
        _composed[key] = config.compose(methods, generators)
    composed = _composed[key]
    study = composed.model_fields["generators"].annotation
    for cls, name in ((composed, "Config"), (study, "GeneratorsConfig")):
        cls.__qualname__ = cls.__name__ = name
        cls.__module__ = __name__
        globals()[name] = cls
    return composed


Config: type[config.Config]
GeneratorsConfig: type[config.GeneratorsConfig]
schema()  # binds the two names above


def location_variable(dataset: str | None) -> str | None:
    """The environment variable naming a registered dataset's local copy."""
    spec = DATASETS.get(dataset)
    return spec.env_var if spec is not None else None


def load_config(params: str | Path = "params.yaml", dataset: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), environment: Mapping[str, str] | None = None
                ) -> config.Config:
    """params.yaml -> the dataset's settings -> ``section.field=value`` overrides -> locations -> a validated Config
    of the composed schema, its registry names checked (:func:`bench.config.read_params` says how values merge)."""
    values = read_params(params, dataset, overrides, environment, location_variable)
    cfg = validated(values, schema())
    check_names(cfg)
    return cfg


def check_names(cfg: config.Config) -> None:
    """Every dataset, method and generator the params name is registered, and each method's own checks against the
    selected dataset pass."""
    for where, names in (("benchmark.datasets", cfg.benchmark.datasets), ("data.dataset", [cfg.data.dataset]),
                         ("ablations.dataset", [cfg.ablations.dataset])):
        _registered(where, names, DATASETS)
    _registered("benchmark.methods", cfg.benchmark.methods, METHODS)
    outside = [m for m in cfg.benchmark.crf_methods if m not in cfg.benchmark.methods]
    if outside:
        raise ConfigError(f"invalid parameters: benchmark.crf_methods: {outside[0]!r} is not one of benchmark.methods")
    _registered("generators.names", cfg.generators.names, GENERATORS)
    n_classes = DATASETS[cfg.data.dataset].n_classes
    for method in METHODS.values():
        if method.config is not None:
            method.check(cfg, n_classes)


def _registered(where: str, names: list[str], registry) -> None:
    """Every name at ``where`` is an entry of ``registry``, else one error naming the first unknown and the known."""
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"invalid parameters: {where}: unknown {registry.kind} {unknown[0]!r}; known: "
                          f"{sorted(registry)}")
