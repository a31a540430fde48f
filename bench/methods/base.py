"""What a method declares: how it is fitted, rebuilt from its saved state, how it predicts, how many clusters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.config import ConfigError, Section
from bench.data import dataset_spec
from bench.registry import Registry

if TYPE_CHECKING:
    import torch

    from bench.config import Config
    from bench.evaluate import Prediction
    from bench.features import CachedFeatures


class TrainingDiverged(RuntimeError):
    """A fit that cannot produce a model (a NaN/inf loss, features with NaN, collapsed concepts): the run stops
    instead of writing garbage."""


@dataclass
class History:
    """What a fit logs per step: ``columns`` of equal length, ``step`` and ``loss`` first (train_log.csv)."""

    columns: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "loss": []})
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    def log(self, values: dict[str, float]) -> None:
        """One logged step: {column: value} (``step`` and ``loss`` at least)."""
        for name, value in values.items():
            self.columns.setdefault(name, []).append(value)

    def stop(self) -> History:
        self.seconds = time.perf_counter() - self.started
        return self

    @property
    def steps(self) -> list[float]:
        return self.columns["step"]

    @property
    def loss(self) -> list[float]:
        return self.columns["loss"]

    @property
    def steps_per_second(self) -> float:
        return self.steps[-1] / self.seconds if self.seconds and self.steps else float("nan")

    def csv(self) -> str:
        names = list(self.columns)
        rows = [",".join(names)]
        for values in zip(*self.columns.values()):
            rows.append(",".join(_cell(name, v) for name, v in zip(names, values)))
        return "\n".join(rows) + "\n"


def _cell(name: str, value: float) -> str:
    if name == "step":
        return str(int(value))
    return f"{value:.3e}" if name == "lr" else f"{value:.6f}"


@dataclass
class Fitted:
    """A fitted method: the model, the facts its rebuilding needs (saved beside the state dict in model.pt), its
    training history and a summary (train_summary.json)."""

    model: torch.nn.Module
    facts: dict[str, Any]
    history: History
    summary: dict[str, Any] = field(default_factory=dict)
    title: str = ""  # the loss curve's title


class Predictor:
    """(cached features [B, h, w, d], label size, [CLS] attention [B, heads, h, w], image names) -> Prediction:
    per-pixel segment scores at the label's resolution. ``summary()``: extra metrics over every call."""

    def __call__(self, features: torch.Tensor, size: tuple[int, int], cls_attention: torch.Tensor,
                 names: list[str]) -> Prediction:
        raise NotImplementedError

    def summary(self) -> dict[str, float]:
        return {}


class Method:
    """One method of the benchmark; subclasses are registered with :func:`bench.methods.register_method`."""

    name: str = ""
    title: str = ""
    config: type[Section] | None = None  # its own params section, under its name (None: it has no settings)
    steps_key: str | None = None  # the dotted key of its training steps (a sweep's budget sets it); None: no steps

    def check(self, cfg: Config, n_classes: int) -> None:
        """Checks across its section and the dataset (``n_classes``) that a section alone cannot make: raise
        ConfigError naming the parameter."""

    def report_note(self, cfg: Config) -> str | None:
        """One line for the report's notes: how the method was trained and run (None: nothing to add)."""
        return None

    def n_clusters(self, cfg: Config) -> int:
        """Clusters its predictions use (K); by default the dataset's number of classes."""
        return dataset_spec(cfg).n_classes

    def fit(self, cfg: Config, seed: int, device: torch.device, progress: bool = True) -> Fitted:
        raise NotImplementedError

    def build(self, cfg: Config, facts: dict[str, Any]) -> torch.nn.Module:
        """An unfitted model of the right shapes, for the saved state dict."""
        raise NotImplementedError

    def predictor(self, cfg: Config, model: torch.nn.Module, facts: dict[str, Any], device: torch.device,
                  split: str) -> Predictor:
        raise NotImplementedError

    def record(self, cfg: Config) -> dict[str, Any]:
        """Options that change this method's numbers but stay out of the config hash (bench.config.ARITHMETIC),
        written into every run's metrics.json."""
        return {}

    def reusable(self, cfg: Config, metrics: dict[str, Any]) -> bool:
        """Whether a stored run with this config's hash (its ``metrics``) is what ``cfg`` would compute."""
        return True

    def overcluster_k(self, cfg: Config) -> int:
        """K' > classes of the separate over-clustering metric (0: the method has none)."""
        return 0

    def overcluster_predictor(self, cfg: Config, model: torch.nn.Module, facts: dict[str, Any],
                              device: torch.device, split: str) -> Predictor:
        raise NotImplementedError(f"{self.name} has no over-clustering metric")


def feature_mean(feats: CachedFeatures, centre: bool) -> torch.Tensor:
    """The split's mean feature (raw DINO tokens share a large common component), or zeros."""
    import torch

    if not centre:
        return torch.zeros(feats.dim)
    return feats.all_rows().float().mean(0)


def check_finite(feats: CachedFeatures) -> None:
    """Features holding NaN or inf stop the fit naming the images (one would spoil every image through the mean)."""
    import torch

    bad_rows = ~torch.isfinite(feats.all_rows()).all(1)
    if bad_rows.any():
        image = torch.bucketize(bad_rows.nonzero().flatten(), feats.offsets[1:], right=True)
        names = [feats.names[i] for i in image.unique().tolist()]
        raise TrainingDiverged(f"the cached features of {len(names)} image(s) hold NaN or inf values, e.g. "
                               f"{names[:3]}: delete the feature cache entry and extract it again")


def check_overclustering(key: str, k: int, n_classes: int, dataset: str) -> None:
    """The separate over-clustering metric needs K' > the dataset's classes (0 = off)."""
    if k and k <= n_classes:
        raise ConfigError(f"invalid parameters: {key}={k}: over-clustering needs more clusters than the {n_classes} "
                          f"classes of {dataset} (0 = off)")


METHODS: Registry[Method] = Registry("method", ConfigError, "see `acseg-bench methods`")
register_method = METHODS.register
get_method = METHODS.lookup


def method_title(name: str) -> str:
    return METHODS[name].title if name in METHODS else name
