"""The registry of methods (like timm's models): ``benchmark.methods`` and ``--method`` name them.

| name | method | fitted by | segments |
| --- | --- | --- | --- |
| ``acseg`` | ACSeg: concept generator + concept classifier | its loss on the train split, then k-means over concept regions | the image's concepts, each carrying a class |
| ``kmeans`` | DINO k-means, the floor | k-means over patch features of the cluster split | K clusters |
| ``stego``, ``stego_kmeans``, ``stego_published`` | STEGO on cached features (calibrated shifts, probe / k-means readout; published shifts) | its correspondence loss + cluster probe | K clusters |
| ``dsm`` | Deep Spectral Methods | per-image spectral segments, k-means of the segments over the cluster split | segments carrying a cluster |

A method is one module here that declares its settings section and calls :func:`register_method`: a :class:`~bench.methods.base.Method` says how
it is fitted, how its saved state is rebuilt, how it predicts segment scores and how many clusters it has.
``bench.runs`` trains, saves, evaluates and collects every method the same way.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.methods.base import (METHODS, Fitted, History, Method, Predictor, TrainingDiverged, get_method,
                                method_title, register_method)

__all__ = ["METHODS", "Fitted", "History", "Method", "Predictor", "TrainingDiverged", "get_method", "method_title",
           "register_method"]

# Every module of this package but base registers itself when imported: a new one is found without a list to edit.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
