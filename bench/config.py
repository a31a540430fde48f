"""One typed configuration for the whole harness, loaded once and passed down.

``params.yaml`` (the DVC parameters file, composed by DVC's Hydra integration from ``conf/``) is read, the selected
dataset's own settings (``datasets.<name>``) are laid over the common ones, then command-line overrides
(``section.field=value``), then the environment (locations only), and the result is validated against the schema
below into a frozen :class:`Config`. Nothing writes into a config afterwards: a variant (a sweep's point) is a new
config made by :func:`with_overrides`, validated the same way.

Merging and the parsing of ``key=value`` overrides are OmegaConf's; types, choices and ranges are pydantic's, so an
unknown key or a wrong type is an error naming the key. Every field is required: its value lives in ``conf/``
(hence in ``params.yaml``, where DVC tracks it), never in code.

Environment variables are read here and nowhere else, in :func:`locate`, and only say *where* things are:

- ``ACSEG_CAMVID_DIR``, ``ACSEG_STANFORD_BACKGROUND_DIR``, ``ACSEG_VOC_DIR``, ``ACSEG_COCOSTUFF_DIR``,
  ``ACSEG_CITYSCAPES_DIR``: a local copy of that dataset instead of a download (each dataset names its variable;
  only the selected dataset's is read)
- ``ACSEG_WEIGHTS_DIR``: the folder where a backbone weights file named in the params is looked up
- ``MLFLOW_TRACKING_URI``: the MLflow store (default ``sqlite:///mlflow.db`` in the working directory)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """An invalid parameter: the message names it and says why."""


# A field's role decides whether it belongs to a configuration's identity (its hash, the config saved with every
# model): locations (where files are) and speed settings (how many workers) never change a result, so two machines
# that mount the cache at different paths, or run with other worker counts, compute the same hash.
LOCATION = {"role": "location"}
SPEED = {"role": "speed"}
# The arithmetic a process runs (acseg.arithmetic) changes ACSeg's numbers the way the processor does, and no other
# method's: like the processor it is recorded with every ACSeg run (its metrics.json and model.pt, MLflow) instead of
# joining the hash, so that the other methods' stored runs keep their identity; a stored ACSeg run is reused only
# under the same arithmetic (bench.methods.base.Method.reusable).
ARITHMETIC = {"role": "arithmetic"}


def location(description: str = "") -> Any:
    return Field(None, description=description, json_schema_extra=LOCATION)


def speed(description: str = "") -> Any:
    return Field(description=description, json_schema_extra=SPEED)


# An option added after results exist, at the value that reproduces them (its neutral value), stays out of the
# identity: every stored result keeps its hash, and any other value makes a configuration of its own.
def added_option(neutral: Any, description: str, **constraints: Any) -> Any:
    return Field(neutral, description=description, json_schema_extra={"neutral": neutral}, **constraints)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- sections


class DataConfig(Section):
    dataset: str = Field(description="the selected dataset (set by --dataset or benchmark.datasets[0])")
    local_copy: str | None = location("the dataset's official archives or layout; None: its $ACSEG_*_DIR, else download")
    download_dir: str = Field("data/raw", description="where downloads are unpacked", json_schema_extra=LOCATION)
    train_split: str = Field(description="the concept generator (and STEGO's head) is trained here")
    cluster_split: str = Field(description="the concept classifier and the k-means centroids are fit here (no labels)")
    eval_split: str = Field(description="metrics are computed here (labels are used for nothing else)")
    keep_aspect: bool = Field(description="each image keeps its aspect ratio: its own patch grid of about "
                                          "features.height x features.width pixels; false: every image is resized "
                                          "to exactly that size")


class BackboneConfig(Section):
    name: str = Field(description="a registered timm ViT (bench/backbones.py)")
    weights: str = Field(description="'hub' (timm's pretrained weights), 'random' (the control) or a file name, "
                                     "looked up in weights_dir")
    weights_sha256: str | None = Field(description="a file's sha256, checked before loading")
    weights_dir: str | None = location("where the weights file is; None: $ACSEG_WEIGHTS_DIR")
    weights_label: str = Field(description="how results name these weights", json_schema_extra=LOCATION)

    @field_validator("weights")
    @classmethod
    def _bare_name(cls, v: str) -> str:
        if "/" in v:
            raise ValueError("must be 'hub', 'random' or a file name (its folder goes to backbone.weights_dir): it "
                             "names the feature cache folder")
        return v


class FeatureConfig(Section):
    type: Literal["tokens", "keys"] = Field(description="last-layer output tokens or last-layer attention keys")
    height: int = Field(ge=1, description="input height in pixels, a multiple of the patch size")
    width: int = Field(ge=1, description="input width in pixels, a multiple of the patch size")
    cache_dir: str = Field(description="the feature cache", json_schema_extra=LOCATION)
    batch_size: int = Field(ge=1, description="images per backbone forward pass")


class TrainConfig(Section):
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(ge=0, description="0: off")
    pixel_samples: int = Field(ge=0, description="pixels per image inside the loss (0: all)")
    log_every: int = Field(ge=1)
    precision: Literal["float32", "float64"] = Field(
        description="the generator trains (and the classifier's k-means runs) in this precision; float64 keeps "
                    "float-rounding differences (another thread count, another processor) from growing into "
                    "other concepts")
    average_last: float = added_option(
        0.0, "0: keep the last step's weights; 0 < f <= 1: the uniform average of the weights after each of the last "
             "f of the steps (stochastic weight averaging), so that the result does not hang on where the last "
             "steps happened to land", ge=0, le=1)


class ClassifierConfig(Section):
    n_classes: int = Field(ge=0, description="K; 0: the dataset's number of classes")
    cosine: bool = Field(description="spherical k-means over L2-normalised region embeddings")
    raw_regions: bool = Field(description="region means of the raw (not centred) features")
    weighted: bool = Field(description="weight each region by its pixel count in the k-means")
    n_init: int = Field(ge=1, description="k-means restarts; the lowest inertia wins (no labels involved)")
    iters: int = Field(ge=1)
    background: Literal["none", "cls_attention"] = Field(
        description="VOC's background split: the concepts of the low cluster of a per-image 2-means over their "
                    "summed [CLS] attention are background")
    overcluster_k: int = Field(ge=0, description=">0: also fit K' > classes, the separate over-clustering metric")
    regions: Literal["mean", "crops"] = Field(
        description="what represents a concept: its region's mean feature, or its box re-encoded by the backbone")
    region_features: Literal["tokens", "keys", "both"] = Field(
        description="mean: which cached features a region's mean is taken of (whatever the generator reads); both: "
                    "the L2-normalised means of the tokens and of the keys, concatenated")
    crop_size: int = Field(ge=1, description="crops only: the backbone's square input, a multiple of its patch")


class GraphConfig(Section):
    """The pixel graph of ACSeg's loss (acseg.losses.Graph)."""

    kind: Literal["dense", "knn", "threshold"] = Field(description="dense max(0, cos) (the paper's reading), k-NN "
                                                                   "sparsified (symmetrised), or thresholded")
    k: int = Field(ge=1, description="knn: neighbours per pixel, among the pixels the loss sees")
    threshold: float = Field(ge=0, lt=1, description="threshold: the affinity an edge must exceed")
    features: Literal["tokens", "keys", "both"] = Field(
        description="what the graph's affinity compares (the generator reads features.type); both: the mean of the "
                    "tokens' and the keys' cosines")


class ACSegConfig(Section):
    """ACSeg: the concept generator (docs/method.md step 2), its loss, its training and its concept classifier."""

    prototypes: int = Field(ge=2, description="k (ACSeg needs at least 2 prototypes)")
    depth: int = Field(ge=1, description="N decoder blocks")
    width: int | None = Field(description="block width; None: the backbone width (the paper)")
    heads: int = Field(ge=1)
    mlp_width: int = Field(ge=1)
    self_attention: bool = Field(description="prototypes attend to each other in every block")
    prototype_scale: float = added_option(
        1.0, "the prototypes' norm at initialisation (entries N(0, scale^2 / width)); at 1 an image's concepts start as "
             "near copies of each other, larger values start them apart", gt=0)
    loss: Literal["modularity", "soft_modularity", "no_degree", "distortion"]
    soft_temperature: float = Field(gt=0, description="soft_modularity only")
    intensity_temperature: float = added_option(
        0.0, "modularity and no_degree: 0: D_ij = max_c S+_ic S+_jc (docs/method.md); tau > 0: the softmax-weighted "
             "mean over concepts at temperature tau, a smooth max whose gradient does not jump when the winning "
             "concept of a pair changes", ge=0)
    centre: bool = Field(description="subtract the training split's mean feature before everything")
    arithmetic: Literal["native", "pinned"] = Field(
        "native", json_schema_extra=ARITHMETIC,
        description="CPU float arithmetic of the processes that run ACSeg. native: the processor's fastest kernels, "
                    "whose order of float sums depends on the processor and the thread count, and ACSeg's training "
                    "turns any rounding difference into another generator (README, Stability); pinned: oneMKL's AVX2 "
                    "branch in strict reproducibility mode, ATen's AVX2 kernels, LayerNorm and softmax gradients "
                    "summed in a fixed order (bench/arithmetic.py), so that a seed gives the same numbers on any "
                    "thread count and on any x86-64 processor with AVX2 (recorded with each run, not part of the "
                    "hash)")
    graph: GraphConfig
    train: TrainConfig
    classifier: ClassifierConfig

    @model_validator(mode="after")
    def _width(self) -> ACSegConfig:
        if self.width is not None and self.width % self.heads:
            raise ValueError(f"acseg.width={self.width} must be divisible by acseg.heads={self.heads}")
        if self.classifier.background != "none" and self.classifier.n_classes == 1:
            raise ValueError("acseg.classifier.n_classes=1: the background split needs at least one class besides "
                             "background")
        return self


class KMeansConfig(Section):
    """DINO k-means, the floor: K clusters over the patch features of the cluster split."""

    k: int = Field(ge=0, description="0: the dataset's number of classes")
    cosine: bool
    centre: bool
    n_init: int = Field(ge=1, description="restarts; the lowest inertia wins (no labels involved)")
    iters: int = Field(ge=1)
    max_points: int = Field(ge=1, description="patches drawn from the cluster split to fit the centroids")
    overcluster_k: int = Field(ge=0, description=">0: also fit K' > classes, the separate over-clustering metric")


class StegoConfig(Section):
    """STEGO trained on cached features (docs/protocol.md). The methods ``stego`` (cluster probe),
    ``stego_kmeans`` (k-means on the trained codes) and ``stego_published`` (the published shifts) each read their
    own section of this type (conf/config.yaml makes the two variants copies of ``stego``)."""

    code_dim: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1, description="whole feature channels, per image")
    knn: int = Field(ge=1, description="neighbours kept per image in the k-NN table")
    knn_draw: int = Field(ge=1, description="a positive is drawn uniformly from the nearest knn_draw")
    feature_samples: int = Field(ge=1, description="an S x S set of points per image in the loss")
    neg_samples: int = Field(ge=0, description="random-image pairings per step")
    pointwise: bool = Field(description="centre each point's feature correlations")
    zero_clamp: bool
    w_self: float
    w_knn: float
    w_rand: float
    shift_self: float = Field(description="used when shifts is published or manual")
    shift_knn: float
    shift_rand: float
    shifts: Literal["calibrated", "published", "manual"] = Field(
        description="calibrated: each term's shift is the quantile of the training split's feature correlations "
                    "that makes repel_<term> of its sampled pairs repel (the default wherever no recipe for the "
                    "backbone and dataset was published); published/manual: shift_self/knn/rand as given")
    repel_self: float = Field(gt=0, lt=1, description="calibrated: the fraction of self pairs that repel")
    repel_knn: float = Field(gt=0, lt=1, description="calibrated: the fraction of k-NN pairs that repel")
    repel_rand: float = Field(gt=0, lt=1, description="calibrated: the fraction of random-image pairs that repel")
    calibration_batches: int = Field(ge=1, description="calibrated: sampled batches the correlations are drawn from")
    sampling: Literal["patches", "continuous"] = Field(
        description="points at patch centres, or at continuous coordinates read bilinearly (STEGO's own)")
    correlation_dropout: bool = Field(description="F from the features after the head's dropout (STEGO's own code)")
    five_crop_ratio: float = added_option(
        0.0, "0: train on the training split's whole images (the feature cache's); 0 < r < 1: on five crops of each "
             "(its four corners and centre, each r of its height and width, re-encoded at the features' input size: "
             "STEGO's own training views, r = 0.5 there)", ge=0, lt=1)
    five_crop_zoom: bool = added_option(
        True, "five crops: true: each crop resized to the features' input size (the scene seen 1/r times larger than "
              "in the whole images it is evaluated on, as STEGO trains); false: each crop keeps the whole image's "
              "scale (r of its input size)")
    probe_reseed_every: int = Field(ge=0, description="steps between re-seeding probe centroids that won no point "
                                                       "(0: never)")
    kmeans_n_init: int = Field(ge=1, description="the k-means readout of the codes: restarts, lowest inertia wins")
    kmeans_iters: int = Field(ge=1)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=2, description="the random-image term needs at least 2 images a batch")
    lr: float = Field(gt=0, description="head")
    probe_lr: float = Field(gt=0, description="cluster probe")
    log_every: int = Field(ge=1)
    centre: bool = Field(description="subtract the training split's mean feature (STEGO: raw features)")

    @model_validator(mode="after")
    def _draw(self) -> StegoConfig:
        if self.knn_draw > self.knn:
            raise ValueError(f"stego.knn_draw={self.knn_draw} must be between 1 and stego.knn={self.knn}")
        return self


class CRFConfig(Section):
    """Dense CRF post-processing: the published DenseCRF2D settings (acseg.crf.CRFParams) and the unary's scale."""

    iterations: int = Field(ge=1)
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    alpha: float = Field(gt=0, description="unary = softmax(alpha * scores)")
    workers: int = speed("CRF processes (0: one per CPU core); results do not depend on it")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0 (0: one process per CPU core)")
        return v

    def params(self):
        from acseg.crf import CRFParams

        return CRFParams(self.iterations, self.gaussian_sxy, self.gaussian_compat, self.bilateral_sxy,
                         self.bilateral_srgb, self.bilateral_compat)


class RunConfig(Section):
    device: str = Field(description="cpu or cuda[:N]")
    # The thread count changes the order of float sums, which training can amplify: it is part of a configuration.
    train_threads: int = Field(ge=0, description="torch threads while a model trains (0: one per core)")
    runs_dir: str = Field(description="run folders: <runs_dir>/<dataset>/<method>/seed<N>/", json_schema_extra=LOCATION)
    results_csv: str = Field(description="one row per evaluated run", json_schema_extra=LOCATION)
    tracking_uri: str | None = location("the MLflow store; None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    track: bool = Field(description="log every run to MLflow; false: the run folders only (they hold everything "
                                    "MLflow gets)", json_schema_extra=LOCATION)  # where records go, never a result
    experiment: str = Field(description="MLflow experiment", json_schema_extra=LOCATION)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not v.startswith("cuda"):
            raise ValueError("must be cpu or cuda[:N]")
        return v


class BenchmarkConfig(Section):
    """The default benchmark's matrix (dvc.yaml): every dataset x method x seed, with and without the CRF."""

    datasets: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    crf_methods: list[str] = Field(description="the methods also evaluated with the dense CRF (a subset of methods)")
    seeds: list[int] = Field(min_length=1)
    splits: list[str] = Field(min_length=1, description="the splits whose features the matrix extracts")


class AblationConfig(Section):
    """The ablation sweeps `dvc repro` runs (stage ablate@<name>): each maps axes (bench/ablate.py: AXES) to values;
    several axes in one sweep = their grid. Every sweep shares one default point (the params, trained for
    ``train_steps``) in ``runs_dir``/default."""

    dataset: str
    sweeps: dict[str, dict[str, list[Any]]]
    train_steps: int = Field(ge=1, description="the ablations' training budget (every point, the default included)")
    jobs: int = speed("points trained at once")
    runs_dir: str = Field(json_schema_extra=LOCATION)
    csv_dir: str = Field(description="one CSV per sweep", json_schema_extra=LOCATION)
    out_csv: str = Field(description="every sweep's rows", json_schema_extra=LOCATION)

    @field_validator("jobs")
    @classmethod
    def _jobs(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class DSMConfig(Section):
    """Deep Spectral Methods as a benchmark method: per-image spectral segments, then dataset-level k-means."""

    eigenvectors: int = Field(ge=2, description="K eigenvectors of the Laplacian per image (the constant one included)")
    segments: int = Field(ge=1, description="segments per image (the k of the k-means on the eigenvectors)")
    adaptive: bool = Field(description="segments per image from the eigengap instead of `segments`")
    normalised: bool = Field(description="the normalised Laplacian (L v = mu D v); false: L v = mu v")
    colour_weight: float = Field(ge=0, description="lambda of the KNN-matting colour affinity; 0: features only")
    colour_neighbours: list[int] = Field(min_length=1, description="k of each KNN colour affinity")
    colour_distance_weights: list[float] = Field(min_length=1, description="weight of (x, y) in each KNN")
    centre: bool = Field(description="subtract the cluster split's mean feature first (DSM: no)")
    segment_n_init: int = Field(ge=1, description="restarts of the per-image k-means on the eigenvectors")
    segment_iters: int = Field(ge=1)
    background: Literal["none", "border"] = Field(
        description="border: per image, the segment with most border patches is the background class")
    regions: Literal["mean", "crops"] = Field(
        description="what represents a segment: its mean feature, or its eroded/dilated box re-encoded ([CLS])")
    erode: int = Field(ge=0, description="crops only: erosions of a segment's mask before its box")
    dilate: int = Field(ge=0, description="crops only: dilations after the erosions")
    crop_size: int = Field(ge=1, description="crops only: the backbone's square input, a multiple of its patch")
    pca_dim: int = Field(ge=0, description="PCA dimension of the segment embeddings before k-means (0: none)")
    n_clusters: int = Field(ge=0, description="K; 0: the dataset's number of classes")
    n_init: int = Field(ge=1, description="dataset-level k-means restarts; the lowest inertia wins (no labels)")
    iters: int = Field(ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> DSMConfig:
        if len(self.colour_neighbours) != len(self.colour_distance_weights):
            raise ValueError("dsm.colour_neighbours and dsm.colour_distance_weights must have one entry each per KNN")
        if self.adaptive and self.eigenvectors < 3:
            raise ValueError("dsm.adaptive needs dsm.eigenvectors >= 3 (the eigengap skips the first gap)")
        return self


class GeneratorKMeansConfig(Section):
    k: int = Field(ge=0, description="segments per image; 0: acseg.prototypes")
    n_init: int = Field(ge=1)
    iters: int = Field(ge=1)


class GeneratorAdaptiveKMeansConfig(Section):
    k_min: int = Field(ge=1)
    k_max: int = Field(ge=0, description="0: acseg.prototypes")
    criterion: Literal["modularity", "eigengap"] = Field(
        description="the label-free choice of k per image: Newman's Q of the partition, or the Laplacian's eigengap")
    n_init: int = Field(ge=1)
    iters: int = Field(ge=1)


class GeneratorSpectralConfig(Section):
    segments: int = Field(ge=0, description="segments per image; 0: acseg.prototypes")
    eigenvectors: int = Field(ge=0, description="eigenvectors of the Laplacian; 0: as many as segments")
    normalised: bool
    n_init: int = Field(ge=1)
    iters: int = Field(ge=1)


class GeneratorsConfig(Section):
    """The concept-generator study: each generator's concepts through ACSeg's concept classifier and retrieval."""

    names: list[str] = Field(min_length=1, description="registered generators (bench/generators.py); the first is "
                                                       "the reference every other is compared with")
    kmeans: GeneratorKMeansConfig
    kmeans_adaptive: GeneratorAdaptiveKMeansConfig
    spectral: GeneratorSpectralConfig
    retrieval_k: list[int] = Field(min_length=1, description="the k of each top-k retrieval column")
    batch_size: int = speed("images per concept-step call")
    out_dir: str = Field(description="one CSV per dataset", json_schema_extra=LOCATION)

    @field_validator("retrieval_k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every retrieval k must be >= 1")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


# Sections that plan what runs (which datasets, which sweeps, which studies), never how one run computes.
PLAN_SECTIONS = ("benchmark", "datasets", "ablations", "generators")


class Config(Section):
    benchmark: BenchmarkConfig
    datasets: dict[str, dict[str, Any]] = Field(
        description="per dataset, its own settings over the common sections (e.g. its resolution)")
    data: DataConfig
    backbone: BackboneConfig
    features: FeatureConfig
    acseg: ACSegConfig
    kmeans: KMeansConfig
    stego: StegoConfig
    stego_kmeans: StegoConfig
    stego_published: StegoConfig
    dsm: DSMConfig
    crf: CRFConfig
    run: RunConfig
    ablations: AblationConfig
    generators: GeneratorsConfig

    @model_validator(mode="after")
    def _names(self) -> Config:
        from bench.datasets import DATASETS

        for where, names in (("benchmark.datasets", self.benchmark.datasets), ("data.dataset", [self.data.dataset]),
                             ("ablations.dataset", [self.ablations.dataset])):
            unknown = [n for n in names if n not in DATASETS]
            if unknown:
                raise ValueError(f"{where}: unknown dataset {unknown[0]!r}; known: {sorted(DATASETS)}")
        missing = [n for n in self.benchmark.datasets if n not in self.datasets]
        if missing:
            raise ValueError(f"benchmark.datasets: {missing[0]!r} has no entry in datasets (its settings; DVC tracks "
                             "them per dataset)")
        from bench.methods import METHODS

        unknown = [m for m in self.benchmark.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"benchmark.methods: unknown method {unknown[0]!r}; known: {sorted(METHODS)}")
        outside = [m for m in self.benchmark.crf_methods if m not in self.benchmark.methods]
        if outside:
            raise ValueError(f"benchmark.crf_methods: {outside[0]!r} is not one of benchmark.methods")
        for over in ("acseg.classifier.overcluster_k", "kmeans.overcluster_k"):
            n, k = DATASETS[self.data.dataset].n_classes, _get(self, over)
            if k and k <= n:
                raise ValueError(f"{over}={k}: over-clustering needs more clusters than the {n} classes of "
                                 f"{self.data.dataset} (0 = off)")
        if self.backbone.weights not in ("hub", "random") and not self.backbone.weights_sha256:
            raise ValueError("backbone.weights_sha256: a weights file needs its sha256, so the file can be verified")
        return self

    # ---- identity
    def to_dict(self) -> dict[str, Any]:
        """The configuration's identity: every option that can change a result (no plan, locations or speed)."""
        return {name: identity(getattr(self, name)) for name in type(self).model_fields if name not in PLAN_SECTIONS}

    def flat(self) -> dict[str, Any]:
        """``section.field -> value`` of every option (as logged to MLflow)."""
        return _flatten(self.model_dump())

    def hash(self, *sections: str) -> str:
        """A short stable hash of some sections of the identity (all if none): identifies a configuration."""
        d = self.to_dict()
        chosen = {s: d[s] for s in (sections or d)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def identity(value: Any) -> Any:
    """A section's options that can change a result (no locations, no speed settings, no added option at its
    neutral value; not the arithmetic, recorded with the runs instead), nested as dicts."""
    if not isinstance(value, BaseModel):
        return value
    out = {}
    for name, info in type(value).model_fields.items():
        extra = info.json_schema_extra or {}
        if extra.get("role") in ("location", "speed", "arithmetic"):
            continue
        if "neutral" in extra and getattr(value, name) == extra["neutral"]:
            continue
        out[name] = identity(getattr(value, name))
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "sweeps":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(cfg: BaseModel, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ----------------------------------------------------------------------------------------------- loading


def load_config(params: str | Path = "params.yaml", dataset: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), environment: Mapping[str, str] | None = None) -> Config:
    """params.yaml -> the dataset's settings -> ``section.field=value`` overrides -> locations -> a validated Config.

    ``dataset``: one of ``benchmark.datasets`` or any registered dataset (default: the first of the benchmark). An
    override's value is read as YAML (``5``, ``null``, ``[0, 1]``, ``{loss: [soft_modularity]}``) and replaces the
    value at its key."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(params)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist (params.yaml is composed from conf/ by "
                          "`dvc exp run` or `acseg-bench params`; the repository has one)")
    cli = []
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {text!r} must look like section.field=value")
        try:
            cli.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as e:
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    try:
        values = OmegaConf.load(path)
        for key, value in cli:
            OmegaConf.update(values, key, value, merge=False)
        name = dataset or (OmegaConf.select(values, "benchmark.datasets") or [None])[0]
        own = OmegaConf.select(values, f"datasets.{name}") if name else None
        if own is not None and OmegaConf.select(own, "data.dataset") is not None:
            raise ConfigError(f"datasets.{name}.data.dataset: a dataset's settings cannot rename it")
        values = OmegaConf.merge(values, own or {})
        for key, value in cli:  # the command line wins over the dataset's own settings
            OmegaConf.update(values, key, value, merge=False)
        OmegaConf.update(values, "data.dataset", name, merge=False)
        resolved = OmegaConf.to_container(values)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    locate(resolved, os.environ if environment is None else environment)
    return validated(resolved)


def validated(values: dict[str, Any]) -> Config:
    """A Config from plain values, or a ConfigError naming the first bad parameter and why."""
    try:
        return Config.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_explain(e, values)) from None


def _explain(error: ValidationError, values: dict) -> str:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    name = ".".join(loc)
    if first["type"] == "extra_forbidden":
        parent = _get_path(values, loc[:-1])
        known = sorted(_model_at(loc[:-1]).model_fields) if _model_at(loc[:-1]) else sorted(parent or {})
        return f"unknown parameter {name!r}; {'.'.join(loc[:-1]) or 'the params'} has {known}"
    if first["type"] == "missing":
        return f"missing parameter {name!r} (every parameter is set in conf/, hence params.yaml)"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections names its parameter itself
        return f"invalid parameters: {message}"
    model = _model_at(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    why = f" ({field.description})" if field is not None and field.description else ""
    return f"invalid parameter {name}={first.get('input')!r}: {message}{why}"


def _get_path(values: Any, path: list[str]) -> Any:
    for p in path:
        values = values.get(p) if isinstance(values, dict) else None
    return values


def _model_at(path: list[str]) -> type[BaseModel] | None:
    model: Any = Config
    for p in path:
        field = model.model_fields.get(p) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def locate(values: dict[str, Any], env: Mapping[str, str]) -> None:
    """The one place environment variables enter: where the dataset, the weights and the MLflow store are."""
    from bench.datasets import DATASETS

    data, backbone, run = (values.setdefault(s, {}) for s in ("data", "backbone", "run"))
    spec = DATASETS.get(data.get("dataset"))  # an unknown dataset is reported by the validation
    if data.get("local_copy") is None and spec is not None and spec.env_var and env.get(spec.env_var):
        data["local_copy"] = env[spec.env_var]
    if backbone.get("weights_dir") is None and env.get("ACSEG_WEIGHTS_DIR"):
        backbone["weights_dir"] = env["ACSEG_WEIGHTS_DIR"]
    if run.get("tracking_uri") is None:
        run["tracking_uri"] = env.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def mlflow_defaults() -> None:
    """MLflow reads its settings from the environment: no telemetry, and an unreachable tracking server fails in
    seconds rather than after minutes of retries. A user's own settings of these variables win."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def pin_arithmetic(variables: Mapping[str, str]) -> None:
    """acseg.arithmetic: pinned: set the variables oneMKL and ATen read when they start (bench/arithmetic.py says
    which and why), for this process and the ones it starts."""
    os.environ.update(variables)


def mkl_reproducibility() -> str:
    """oneMKL's reproducibility setting in this process (MKL_CBWR), for a run's records."""
    return os.environ.get("MKL_CBWR", "unset")


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A validated new Config with some ``section.field`` values changed (a sweep's point, another feature type)."""
    values = cfg.model_dump()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = values
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown parameter {dotted!r}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown parameter {dotted!r}")
        node[leaf] = value
    return validated(values)
