"""Concept generators, registered as timm registers its models: each cuts an image's cached features into concepts.

A generator is one module here: a :class:`ConceptGenerator` subclass that declares its settings (a pydantic section,
``generators.<name>`` in the params), builds a :class:`ConceptStep` and registers itself with
:func:`register_generator`. The study that runs them all through ACSeg's concept classifier is
:mod:`bench.concept_study`.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.generators.base import (GENERATORS, ConceptGenerator, ConceptStep, eigh_flops, generator_title,
                                   get_generator, or_prototypes, register_generator)

__all__ = ["GENERATORS", "ConceptGenerator", "ConceptStep", "eigh_flops", "generator_title", "get_generator",
           "or_prototypes", "register_generator"]

# Every module of this package but base registers itself when imported: a new one is found without a list to edit.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
