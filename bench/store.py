"""Run folders: where a run of (dataset, method, seed) keeps its files, its model saved and read back, and what ties
each evaluation to the model it evaluated. Every step that writes or reads a run goes through here.

- ``model.pt`` records the training configuration (its identity and hash) and a digest of its weights; reading it
  back checks the digest, and refuses a model trained under other settings than the ones asked for, naming them.
- an evaluation records the digest of the ``model.pt`` file it read, so a metrics.json whose model was replaced
  since (retrained into the same folder) is found out (:func:`stale_evaluation`).
- a step writes its files into a staging folder and moves them into the run folder only once all are written
  (:func:`updating`): a failure half-way leaves the folder as it was.
- :func:`check_writable` finds a read-only or full run folder before the work starts, not after it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.config import Config, flatten, identity_hash
from bench.data import sha256_file
from bench.methods import get_method

__all__ = ["RunError", "check_writable", "eval_dir", "load_fitted", "model_path", "run_dir", "save_model",
           "stale_evaluation", "training_identity", "updating"]

MODEL_FILE = "model.pt"
MIN_FREE_BYTES = 64 << 20  # a run's files are a few MB; less free space than this is a disk about to fill up
# Keys that change how a model is evaluated, never what it is: a model is evaluated under any value of them (the
# split, the post-processing, the device the evaluation runs on).
EVALUATION_KEYS = ("data.eval_split", "run.device")
EVALUATION_SECTIONS = ("crf",)


class RunError(RuntimeError):
    """A run folder that cannot be used as asked: a model trained under other settings, a corrupt model file, an
    evaluation of another model, a folder that cannot be written. The message names the file and what to do."""


def run_dir(cfg: Config, method: str, seed: int) -> Path:
    return Path(cfg.run.runs_dir) / cfg.data.dataset / method / f"seed{seed}"


def eval_dir(cfg: Config, method: str, seed: int, crf: bool) -> Path:
    """Where an evaluation's outputs go: the run folder, or, CRF-refined, <runs_dir>/crf/<dataset>/<method>/seed<N>
    (one DVC output per dataset: every method and seed is refined in one pass, each image's CRF kernels built once)."""
    if crf:
        return Path(cfg.run.runs_dir) / "crf" / cfg.data.dataset / method / f"seed{seed}"
    return run_dir(cfg, method, seed)


def model_path(cfg: Config, method: str, seed: int) -> Path:
    return run_dir(cfg, method, seed) / MODEL_FILE


# ------------------------------------------------------------------------------------- the training identity


def training_identity(config: dict[str, Any], method: str) -> dict[str, Any]:
    """``section.field -> value`` of every option that decides what training ``method`` produces, from a
    configuration's identity (:meth:`Config.to_dict`): the common sections and the method's own, not the other
    methods' sections nor the evaluation's options."""
    from bench.methods import METHODS

    others = {name for name in METHODS if name != method}
    kept = {s: v for s, v in config.items() if s not in others and s not in EVALUATION_SECTIONS}
    return {k: v for k, v in flatten(kept).items() if k not in EVALUATION_KEYS}


def _differences(trained: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    missing = object()
    keys = sorted(set(trained) | set(asked))
    return [f"{k}={_text(trained.get(k, missing))} (asked: {_text(asked.get(k, missing))})" for k in keys
            if trained.get(k, missing) != asked.get(k, missing)]


def _text(value: Any) -> str:
    return "unset" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) else json.dumps(value)


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes: the weights' identity, whatever file holds them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- writing a run


def check_writable(folder: Path) -> None:
    """Raise RunError now, before any work, when ``folder`` cannot be created or written, or its disk is full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise RunError(f"cannot write in {e.filename or folder}: {e.strerror or e} (make it writable, or set "
                       "run.runs_dir to a writable folder)") from None
    if free < MIN_FREE_BYTES:
        raise RunError(f"cannot write in {folder}: {free >> 20} MB free on its disk, at least {MIN_FREE_BYTES >> 20} "
                       "MB needed (free space there, or set run.runs_dir to another disk)")


@contextmanager
def updating(folder: Path) -> Iterator[Path]:
    """A staging folder inside ``folder`` to write a step's files into; once the block completes, each file is moved
    into ``folder`` (renames, which need no space: nothing is left half-written), metrics.json and model.pt last,
    since the other files are checked against them. A block that fails leaves ``folder`` as it was."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.glob(".staging-*"):  # of a step killed before its end (one step writes a run folder at a time)
        shutil.rmtree(left, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
    try:
        yield stage
        for file in sorted(stage.iterdir(), key=lambda p: p.name in ("metrics.json", MODEL_FILE)):
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_model(path: Path, cfg: Config, method: str, facts: dict[str, Any], model: torch.nn.Module) -> None:
    """model.pt: the weights with their digest, the facts their rebuilding needs and the training configuration."""
    state = model.state_dict()
    config = cfg.to_dict()
    torch.save({"method": method, "config": config, "config_hash": cfg.hash(),
                "training": training_identity(config, method), "facts": facts, "state_dict": state,
                "state_sha256": state_digest(state)}, path)


# ----------------------------------------------------------------------------------------- reading a run


def load_fitted(cfg: Config, method: str, seed: int, device: torch.device):
    """(model on ``device`` in eval mode, its facts) of a trained run. The facts carry ``model``: the sha256 of the
    model.pt read, the hash of the configuration it was trained with and the digest of its weights, which an
    evaluation records.

    A missing, empty, truncated or altered model.pt, or a model trained under other settings than ``cfg``'s
    (any option of :func:`training_identity`), is an error naming the file and what to do."""
    m = get_method(method)
    path = model_path(cfg, method, seed)
    train = f"`acseg-bench train --dataset {cfg.data.dataset} --method {method} --seed {seed}`"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}: run {train} (or `dvc repro`) first")
    data = path.read_bytes()
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        state, facts = saved["state_dict"], saved["facts"]
    except Exception as e:  # noqa: BLE001 (a damaged pickle or zip raises anything: EOFError, RuntimeError, ...)
        what = "empty" if not data else f"not a readable model file ({type(e).__name__}: {str(e).splitlines()[0]})"
        raise RunError(f"model file {path} is {what}: train it again with {train}") from None
    if "state_sha256" in saved and state_digest(state) != saved["state_sha256"]:
        raise RunError(f"model file {path} is corrupt: its weights do not match their recorded digest: train it "
                       f"again with {train}")
    trained = saved.get("training") or training_identity(saved.get("config") or {}, method)
    differences = _differences(trained, training_identity(cfg.to_dict(), method))
    if differences:
        raise RunError(f"the model {path} was trained with other settings than the ones asked for: "
                       f"{'; '.join(differences[:5])}{f' and {len(differences) - 5} more' if len(differences) > 5 else ''}"
                       f". Use the settings it was trained with, or train it again with {train} and these settings")
    model = m.build(cfg, facts)
    model.load_state_dict(state)
    config_hash = saved.get("config_hash") or identity_hash(saved.get("config") or {})  # saved before it was kept
    model_facts = {**facts, "model": {"sha256": hashlib.sha256(data).hexdigest(), "config_hash": config_hash,
                                      "state_sha256": saved.get("state_sha256") or state_digest(state)}}
    return model.to(device).eval(), model_facts


def stale_evaluation(metrics: dict[str, Any], model: Path) -> str | None:
    """Why an evaluation's metrics no longer describe the model beside it (None: they do): the model file is gone,
    or is not the one evaluated (retrained since), or the metrics do not say which model they evaluated."""
    recorded = metrics.get("model_sha256")
    if recorded is None:
        return "it records no model digest (evaluated by an older version)"
    try:
        current = sha256_file(model)
    except FileNotFoundError:
        return f"its model {model} is gone"
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"its model {model} cannot be read ({e.strerror})"
        raise
    return None if current == recorded else f"{model} is not the model it evaluated (trained again since)"
