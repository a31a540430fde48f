"""A user's error is one line on stderr, ``error: ...`` naming its file, exit code 2, and no traceback unless
``--verbose`` (before or after the command); a bug keeps its traceback.

The failing steps are stand-ins monkeypatched into ``acseg-bench results`` (its one step, bench.runs.collect_results):
each raises what a bad file or a full disk makes the real steps raise.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from tests.conftest import PARAMS, ROOT


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line(result, *names: str) -> str:
    """Exit code 2, one line on stderr, `error: ...` with every one of ``names``, and no traceback anywhere."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Aborted" not in result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------- params file


@pytest.mark.parametrize("content, why", [
    (b"acseg:\n  a: 1\n   b: 2\n", "mapping values are not allowed here (line 3, column 5)"),
    (b"acseg: [1, 2\nrun: {}\n", "while parsing a flow sequence (line 1, column 8)"),
    (b"acseg:\n  a: 1\nrun: {}\nacseg:\n  b: 2\n", "duplicate key 'acseg' (line 4, column 1)"),
    (b"run:\n  a: 1\n  a: 2\n", "duplicate key 'a' (line 3, column 3)"),
    (b"acseg:\n  name: caf\xe9\n", "not valid UTF-8: byte 0xe9 (line 2, column 12)"),
    (b"- acseg\n- run\n", "the top level must be a mapping of sections (benchmark:, data:, ...), found a list"),
    (b"5\n", "found a single value '5'"),
    (b"", "found nothing (an empty file)"),
    (b"# only a comment\n", "found nothing (an empty file)"),
], ids=["indent", "unclosed-bracket", "duplicate-section", "duplicate-key", "not-utf8", "list", "scalar", "empty",
        "comment-only"])
def test_a_malformed_params_file_is_one_line_with_its_position(tmp_path, content, why):
    params = tmp_path / "params.yaml"
    params.write_bytes(content)
    assert_one_line(run("results", "--params", str(params)), f"error: params file {params}: ", why)


def test_verbose_before_or_after_the_command_adds_the_traceback_and_only_then(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes(b"acseg:\n  a: 1\nacseg:\n  b: 2\n")
    for args in (["results", "--params", str(params), "-v"], ["-v", "results", "--params", str(params)],
                 ["results", "--verbose", "--params", str(params)]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert "Traceback" in result.stderr and "ConfigError" in result.stderr, args
        assert result.stderr.splitlines()[-1].startswith(f"error: params file {params}: duplicate key 'acseg'")
    assert_one_line(run("results", "--params", str(params)), "duplicate key")  # not left on by the runs before


def test_the_installed_command_prints_one_line_and_the_traceback_only_with_verbose(tmp_path):
    """The real process: stderr as a user sees it (CliRunner is not the console script's own stream handling)."""
    params = tmp_path / "params.yaml"
    params.write_bytes(b"- not a mapping\n")
    command = [sys.executable, "-m", "bench.cli", "results", "--params", str(params)]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert quiet.returncode == 2 and quiet.stderr.splitlines() == [
        f"error: params file {params}: the top level must be a mapping of sections (benchmark:, data:, ...), found "
        "a list"], quiet.stderr
    verbose = subprocess.run([*command, "-v"], capture_output=True, text=True, cwd=ROOT)
    assert verbose.returncode == 2 and "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.strip()


# ---------------------------------------------------------------------------------------- errors of a step


@pytest.fixture
def step(monkeypatch):
    """Make `acseg-bench results` run ``fn(cfg)`` as its step; returns the CLI's result."""
    import bench.runs

    def invoke(fn, *extra: str):
        monkeypatch.setattr(bench.runs, "collect_results", fn)
        return run("results", "--params", str(PARAMS), *extra)

    return invoke


def raises(e: BaseException):
    def fn(cfg):
        raise e

    return fn


def test_a_full_disk_is_one_line_naming_the_file_and_what_to_do(step, tmp_path):
    path = str(tmp_path / "runs" / "results.csv")
    line = assert_one_line(step(raises(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path))), path)
    assert line == (f"error: cannot write {path}: [Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)} (free space on "
                    "that disk, or point run.runs_dir / features.cache_dir elsewhere with --set)")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_folder_that_cannot_be_written_is_one_line_naming_it(step, tmp_path, code):
    path = str(tmp_path / "runs" / "camvid" / "acseg" / "seed0")  # does not exist: creating it failed
    line = assert_one_line(step(raises(PermissionError(code, os.strerror(code), path))), f"cannot write {path}: ")
    assert "make it writable for you, or point run.runs_dir / features.cache_dir elsewhere" in line


def test_a_file_that_cannot_be_read_is_one_line_naming_it(step, tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    path.write_bytes(b"")
    access = os.access  # the tests run as root, who may read anything
    monkeypatch.setattr(os, "access", lambda p, *a, **k: False if str(p) == str(path) else access(p, *a, **k))
    line = assert_one_line(step(raises(PermissionError(errno.EACCES, "Permission denied", str(path)))))
    assert line == f"error: cannot read {path}: [Errno 13] Permission denied (make it readable for you)"


def test_an_os_error_without_a_file_keeps_its_message(step):
    assert_one_line(step(raises(FileNotFoundError("no feature cache for camvid split 'val'; run features"))),
                    "error: no feature cache for camvid split 'val'; run features")


def test_a_file_that_is_not_utf8_is_one_line_naming_it(step, tmp_path):
    path = tmp_path / "meta.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    assert_one_line(step(lambda cfg: path.read_text(encoding="utf-8")), f"cannot read {path}: not valid UTF-8",
                    "save it as UTF-8")


def test_an_eof_error_is_one_line_not_aborted(step):
    assert_one_line(step(raises(EOFError("Ran out of input"))), "EOFError: Ran out of input")


def test_an_empty_truncated_or_corrupt_model_file_is_one_line_naming_it(step, tmp_path):
    import safetensors.torch
    import torch

    empty, truncated, corrupt = tmp_path / "model.pt", tmp_path / "truncated.pt", tmp_path / "features.safetensors"
    empty.write_bytes(b"")
    torch.save({"w": torch.zeros(64)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    corrupt.write_bytes(b"\x05" * 20)
    for path, load, kind in ((empty, lambda p: torch.load(p, weights_only=False), "EOFError"),
                             (empty, lambda p: torch.load(p, weights_only=True), "EOFError"),
                             (truncated, lambda p: torch.load(p, weights_only=True), "RuntimeError"),
                             (corrupt, lambda p: safetensors.torch.load_file(str(p)), "SafetensorError")):
        line = assert_one_line(step(lambda cfg, load=load, path=path: load(path)), f"cannot load {path}: {kind}")
        assert line.endswith("(an empty, truncated or corrupt file: delete it and rerun the step that writes it)")


def test_a_decompression_bomb_is_one_line(step):
    from PIL import Image

    assert_one_line(step(raises(Image.DecompressionBombError("Image size (300000000 pixels) exceeds limit"))),
                    "error: cannot read an image: Image size (300000000 pixels) exceeds limit")


def test_a_bug_keeps_its_exception(step):
    result = step(raises(ZeroDivisionError("division by zero")))
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
    assert "error:" not in result.stderr


# ------------------------------------------------------------------------------------------- other commands


def test_a_study_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"points:\n  caf\xe9: {method: acseg}\n")
    assert_one_line(run("study", str(path), "--params", str(PARAMS)), f"cannot read {path}: not valid UTF-8")


def test_a_study_file_of_the_wrong_shape_is_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("- acseg\n- kmeans\n")
    assert_one_line(run("study", str(path), "--params", str(PARAMS)), str(path))


def test_a_hydra_composition_error_is_one_line(tmp_path):
    out = tmp_path / "params.yaml"
    line = assert_one_line(run("params", "experiment=no_such_experiment", "--out", str(out), "--conf",
                               str(ROOT / "conf")), "cannot compose", "no_such_experiment")
    assert "Available options in 'experiment'" in line and not out.exists()
