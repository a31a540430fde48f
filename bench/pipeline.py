"""`acseg-bench repro`: the stages of dvc.yaml, in order, for any params file, preset and overrides.

``dvc repro`` reads ``params.yaml`` only. To run the very same stages for another configuration (the paper's
settings in ``params/paper_*.yaml``, a test fixture), this expands dvc.yaml the way DVC does (``foreach`` over a
list, a mapping (``${key}``) or a parameter such as ``${run.seeds}``, ``matrix`` grids with ``${item.axis}``, ``${item}`` and
``${section.field}`` in commands) and runs each
stage's command with ``--params FILE [--preset NAME] [--set k=v ...]`` appended. Every stage runs (there is no
DVC-style skipping); the feature cache still computes each split's features only once.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from bench.config import Config

_VAR = re.compile(r"\$\{([^}]+)\}")


@dataclass
class StageCommand:
    stage: str  # e.g. "train@0"
    argv: list[str]  # the arguments after `acseg-bench`


def _lookup(key: str, values: dict[str, Any], item: Any, item_key: str | None = None) -> Any:
    if key == "key" and item_key is not None:  # foreach over a mapping: ${key} and ${item}
        return item_key
    if key == "item":
        return item
    if key.startswith("item.") and isinstance(item, dict):  # a matrix point: ${item.method}
        return item[key[len("item."):]]
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"dvc.yaml refers to ${{{key}}}, which the params do not define")
        node = node[part]
    return node


def _interpolate(text: str, values: dict[str, Any], item: Any = None, item_key: str | None = None) -> Any:
    whole = _VAR.fullmatch(text.strip())
    if whole:  # a lone ${...} keeps its type (foreach: ${run.seeds} is a list)
        return _lookup(whole.group(1), values, item, item_key)
    return _VAR.sub(lambda m: str(_lookup(m.group(1), values, item, item_key)), text)


def stage_commands(dvc_yaml: str | Path, cfg: Config, extra_args: list[str]) -> list[StageCommand]:
    """Every stage of dvc.yaml (foreach expanded), in file order, as CLI arguments with ``extra_args`` appended."""
    values = dataclasses.asdict(cfg)
    commands = []
    for name, stage in yaml.safe_load(Path(dvc_yaml).read_text())["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            items = _interpolate(items, values) if isinstance(items, str) else items
            pairs = items.items() if isinstance(items, dict) else ((None, item) for item in items)
            expanded = [(f"{name}@{key if key is not None else item}", stage["do"]["cmd"], item, key)
                        for key, item in pairs]
        elif "matrix" in stage:  # the grid of the listed axes, named like DVC: crf@acseg-0
            axes = {k: _interpolate(v, values) if isinstance(v, str) else v for k, v in stage["matrix"].items()}
            points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
            expanded = [(f"{name}@{'-'.join(str(v) for v in p.values())}", stage["cmd"], p, None) for p in points]
        else:
            expanded = [(name, stage["cmd"], None, None)]
        for label, cmd, item, key in expanded:
            argv = shlex.split(_interpolate(cmd, values, item, key))
            if not argv or argv[0] != "acseg-bench":
                raise ValueError(f"stage {label} of {dvc_yaml} does not call acseg-bench: {cmd!r}")
            commands.append(StageCommand(label, argv[1:] + extra_args))
    return commands


def run_subprocess(argv: list[str]) -> int:
    """One stage in a fresh interpreter (as DVC runs it): memory is returned between stages."""
    return subprocess.run([sys.executable, "-m", "bench.cli", *argv], check=False).returncode


def run_pipeline(commands: list[StageCommand], run: Callable[[list[str]], int] | None = None,
                 echo: Callable[[str], None] = print) -> None:
    """Run the stages in order (by default each in its own process); the first failure stops the pipeline,
    naming the stage and its command."""
    run = run or run_subprocess
    for c in commands:
        echo(f"[{c.stage}] acseg-bench {shlex.join(c.argv)}")
        code = run(c.argv)
        if code != 0:
            raise RuntimeError(f"stage {c.stage} failed (exit code {code}): acseg-bench {shlex.join(c.argv)}")
