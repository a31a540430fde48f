"""The registry of methods (like timm's models): ``benchmark.methods`` and ``--method`` name them.

| name | method | fitted by | segments |
| --- | --- | --- | --- |
| ``acseg`` | ACSeg: concept generator + concept classifier | its loss on the train split, then k-means over concept regions | the image's concepts, each carrying a class |
| ``kmeans`` | DINO k-means, the floor | k-means over patch features of the cluster split | K clusters |
| ``stego``, ``stego_kmeans``, ``stego_published`` | STEGO on cached features (calibrated shifts, probe / k-means readout; published shifts) | its correspondence loss + cluster probe | K clusters |
| ``dsm`` | Deep Spectral Methods | per-image spectral segments, k-means of the segments over the cluster split | segments carrying a cluster |

A method is one module here plus one :func:`register_method` call: a :class:`~bench.methods.base.Method` says how
it is fitted, how its saved state is rebuilt, how it predicts segment scores and how many clusters it has.
``bench.runs`` trains, saves, evaluates and collects every method the same way.
"""

from __future__ import annotations

from bench.methods.base import Fitted, History, Method, Predictor, TrainingDiverged
from bench.config import ConfigError
from bench.registry import Registry


METHODS: Registry[Method] = Registry("method", ConfigError, "see `acseg-bench methods`")
register_method = METHODS.register
get_method = METHODS.lookup


from bench.methods import acseg, dsm, kmeans, stego  # noqa: E402,F401  (each registers itself)

__all__ = ["METHODS", "Fitted", "History", "Method", "Predictor", "TrainingDiverged", "get_method", "register_method"]
