"""One typed configuration for the whole harness, loaded once and passed down.

``params.yaml`` (the DVC parameters file, composed by DVC's Hydra integration from ``conf/``) is read, the selected
dataset's own settings (``datasets.<name>``) are laid over the common ones, then command-line overrides
(``section.field=value``), then the environment (locations only) (:func:`read_params`), and the result is validated
into a frozen :class:`Config` (:func:`validated`). The schema is composed (:func:`compose`, called by
:mod:`bench.schema`) from the common sections below and the section each registered method and concept generator
declares beside its code; this module knows none of them. Nothing writes into a config afterwards: a variant (a
sweep's point) is a new config made by :func:`with_overrides`, validated the same way.

Merging and the parsing of ``key=value`` overrides are OmegaConf's; types, choices and ranges are pydantic's, so an
unknown key or a wrong type is an error naming the key. Every field is required: its value lives in ``conf/``
(hence in ``params.yaml``, where DVC tracks it), never in code.

Environment variables are read here and nowhere else, in :func:`locate`, and only say *where* things are (MLflow's
settings and the pinned arithmetic's variables are also written here, and only here):

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
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator


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
        from acseg.crf import CRFParams  # imports torch: here, so that reading a config stays light

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
    """The ablation sweeps `dvc repro` runs (stage ablate@<name>): each maps axes (a dotted key such as
    ``acseg.prototypes``, or an alias of bench/ablate.py: ALIASES) to values; several axes in one sweep = their grid.
    Every sweep shares one default point (the params, trained for ``train_steps``) in ``runs_dir``/default."""

    dataset: str
    method: str = Field(description="the method a sweep trains when its axes are common settings (features, "
                                    "backbone); an axis of a method's own section trains that method")
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


class GeneratorsConfig(Section):
    """The concept-generator study: each generator's concepts through ACSeg's concept classifier and retrieval. The
    composed schema adds one field per registered generator that declares settings (its own section, under its
    name)."""

    names: list[str] = Field(min_length=1, description="registered generators (bench/generators.py); the first is "
                                                       "the reference every other is compared with")
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
PLAN_SECTIONS = ("benchmark", "studies", "datasets", "ablations", "generators")


class Config(Section):
    """The composed configuration's common part: every section but the methods' and the concept generators', and
    the identity of a configuration. The schema a params file is validated against is :func:`compose`'s subclass of
    it, with one section per registered method (and one per concept generator inside ``generators``)."""

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        missing = [n for n in self.benchmark.datasets if n not in self.datasets]
        if missing:
            raise ValueError(f"benchmark.datasets: {missing[0]!r} has no entry in datasets (its settings; DVC tracks "
                             "them per dataset)")
        if self.backbone.weights not in ("hub", "random") and not self.backbone.weights_sha256:
            raise ValueError("backbone.weights_sha256: a weights file needs its sha256, so the file can be verified")
        return self

    # ---- identity
    def to_dict(self) -> dict[str, Any]:
        """The configuration's identity: every option that can change a result (no plan, locations or speed)."""
        return {name: identity(getattr(self, name)) for name in type(self).model_fields if name not in PLAN_SECTIONS}

    def flat(self) -> dict[str, Any]:
        """``section.field -> value`` of every option (as logged to MLflow)."""
        return flatten(self.model_dump())

    def hash(self, *sections: str) -> str:
        """A short stable hash of some sections of the identity (all if none): identifies a configuration."""
        d = self.to_dict()
        return identity_hash({s: d[s] for s in (sections or d)})

    def section(self, name: str) -> Section:
        """A section by name (a method's own section is under the method's name)."""
        if name not in type(self).model_fields:
            raise ConfigError(f"the configuration has no section {name!r}")
        return getattr(self, name)


# The common sections, in the order of the composed schema: the plan and the inputs, then (between them and the
# rest) the methods' own sections, then the evaluation's post-processing, the run settings and the studies.
HEAD_SECTIONS: dict[str, Any] = {"benchmark": BenchmarkConfig, "studies": (list[str], Field(
    description="the studies `dvc repro` runs (studies/sweeps/<name>.yaml); none by default")), "datasets": (dict[str, dict[str, Any]], Field(
    description="per dataset, its own settings over the common sections (e.g. its resolution)")),
    "data": DataConfig, "backbone": BackboneConfig, "features": FeatureConfig}
TAIL_SECTIONS: dict[str, Any] = {"crf": CRFConfig, "run": RunConfig, "ablations": AblationConfig}


def compose(methods: Mapping[str, type[Section]], generators: Mapping[str, type[Section]]) -> type[Config]:
    """The schema of a whole configuration: the common sections, one section per method (``methods``: section name
    -> its model) and the concept-generator study with one section per generator that has settings."""
    def field(spec: Any) -> tuple[Any, Any]:
        return spec if isinstance(spec, tuple) else (spec, ...)

    study = create_model("GeneratorsConfig", __base__=GeneratorsConfig, __module__=__name__,
                         **{name: (model, ...) for name, model in generators.items()})
    clash = set(methods) & (set(HEAD_SECTIONS) | set(TAIL_SECTIONS) | {"generators"})
    if clash:
        raise ConfigError(f"a method cannot be named like a common section: {sorted(clash)}")
    fields = {**{n: field(s) for n, s in HEAD_SECTIONS.items()}, **{n: (m, ...) for n, m in methods.items()},
              **{n: field(s) for n, s in TAIL_SECTIONS.items()}, "generators": (study, ...)}
    return create_model("Config", __base__=Config, __module__=__name__, **fields)


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


def identity_hash(identity: dict[str, Any]) -> str:
    """A short stable hash of an identity (plain values): what :meth:`Config.hash` gives, also for a stored one."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``section.field -> value`` of nested plain values (an ablation's ``sweeps`` table stays one value)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "sweeps":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(cfg: BaseModel, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ----------------------------------------------------------------------------------------------- loading


def read_params(params: str | Path = "params.yaml", dataset: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), environment: Mapping[str, str] | None = None,
                location_variable: Callable[[str], str | None] = lambda dataset: None) -> dict[str, Any]:
    """params.yaml -> the dataset's settings -> ``section.field=value`` overrides -> locations: plain values, not yet
    validated (:func:`validated` does that against a schema).

    ``dataset``: one of ``benchmark.datasets`` or any registered dataset (default: the first of the benchmark). An
    override's value is read as YAML (``5``, ``null``, ``[0, 1]``, ``{loss: [soft_modularity]}``) and replaces the
    value at its key. ``location_variable``: the environment variable that names a dataset's local copy."""
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
        values = _load_params(path)
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
    locate(resolved, os.environ if environment is None else environment, location_variable)
    return resolved


def _load_params(path: Path) -> Any:
    """A params file as a DictConfig, or a one-line ConfigError with the position yaml gives (OmegaConf.load's own
    errors are ~30 lines of yaml internals, and an empty file or a top-level list passes it and fails later, far
    from the cause)."""
    import io

    import yaml
    from omegaconf import OmegaConf

    def at(mark: Any) -> str:
        return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"params file {path}: {why}")

    try:
        data = path.read_bytes()
    except OSError as e:
        raise fail(f"cannot read it ([Errno {e.errno}] {e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise fail(f"not valid UTF-8: byte 0x{data[e.start]:02x} (line {line}, column {column}); save it as "
                   "UTF-8") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # syntax, and the top level's kind before building values
        if not isinstance(root, yaml.MappingNode):
            found = ("nothing (an empty file)" if root is None else "a list" if isinstance(root, yaml.SequenceNode)
                     else f"a single value {root.value[:40]!r}")
            raise fail(f"the top level must be a mapping of sections (benchmark:, data:, ...), found {found}")
        # OmegaConf's own loader (its float and timestamp rules); it rejects a duplicate key at any depth, where
        # yaml.safe_load would let a second `acseg:` replace the first section silently
        return OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as e:
        problem = (getattr(e, "problem", None) or str(e).splitlines()[0]).removeprefix("but ")
        mark = getattr(e, "problem_mark", None)
        if isinstance(e, yaml.reader.ReaderError):  # a control character: yaml gives its offset only
            mark = yaml.Mark(str(path), e.position, text.count("\n", 0, e.position),
                             e.position - text.rfind("\n", 0, e.position) - 1, None, None)
        if problem.startswith("found duplicate key "):
            raise fail(f"duplicate key {problem.removeprefix('found duplicate key ')!r}{at(mark)}: each key may "
                       "appear once (the second would silently replace the first)") from None
        context = getattr(e, "context", None)
        where = (f", {context}{at(e.context_mark)}"  # e.g. where an unclosed bracket opened
                 if context and e.context_mark is not None else "")
        raise fail(f"{problem}{at(mark)}{where}") from None


def validated(values: dict[str, Any], schema: type[Config]) -> Config:
    """A Config of ``schema`` from plain values, or a ConfigError naming the first bad parameter and why."""
    try:
        return schema.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_explain(e, values, schema)) from None


def _explain(error: ValidationError, values: dict, schema: type[Config]) -> str:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    name = ".".join(loc)
    if first["type"] == "extra_forbidden":
        parent = _get_path(values, loc[:-1])
        model = _model_at(schema, loc[:-1])
        known = sorted(model.model_fields) if model else sorted(parent or {})
        return f"unknown parameter {name!r}; {'.'.join(loc[:-1]) or 'the params'} has {known}"
    if first["type"] == "missing":
        return f"missing parameter {name!r} (every parameter is set in conf/, hence params.yaml)"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections names its parameter itself
        return f"invalid parameters: {message}"
    model = _model_at(schema, loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    why = f" ({field.description})" if field is not None and field.description else ""
    return f"invalid parameter {name}={first.get('input')!r}: {message}{why}"


def _get_path(values: Any, path: list[str]) -> Any:
    for p in path:
        values = values.get(p) if isinstance(values, dict) else None
    return values


def _model_at(schema: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    model: Any = schema
    for p in path:
        field = model.model_fields.get(p) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def locate(values: dict[str, Any], env: Mapping[str, str], location_variable: Callable[[str], str | None]) -> None:
    """The one place environment variables enter: where the dataset, the weights and the MLflow store are."""
    data, backbone, run = (values.setdefault(s, {}) for s in ("data", "backbone", "run"))
    variable = location_variable(data.get("dataset"))  # an unknown dataset is reported by the validation
    if data.get("local_copy") is None and variable and env.get(variable):
        data["local_copy"] = env[variable]
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
    return validated(values, type(cfg))
