"""Pinned arithmetic (bench/arithmetic.py, acseg.arithmetic): what it sets, where it applies, what it guarantees."""

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import arithmetic
from tests.conftest import make_config

ROOT = Path(__file__).parents[2]


def _has_avx2() -> bool:
    try:
        return " avx2 " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:
        return False


def _python(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_pin_sets_the_variables_and_warns_when_torch_chose_other_kernels(monkeypatch, caplog):
    for name in arithmetic.PINNED:
        monkeypatch.delenv(name, raising=False)  # restored after the test
    with caplog.at_level(logging.WARNING, logger="bench.arithmetic"):
        arithmetic.pin()
    assert {k: os.environ[k] for k in arithmetic.PINNED} == {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}
    # tests/conftest.py pinned this process before torch started: torch runs the AVX2 kernels, and pin() has nothing
    # to warn about (a process whose torch had started with AVX-512 kernels would be warned)
    assert ("already runs" in caplog.text) == torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    if _has_avx2():
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"


@pytest.mark.skipif(not _has_avx2(), reason="the pinned kernels are AVX2's; this processor has no AVX2")
def test_a_pinned_process_runs_the_avx2_kernels_whatever_the_processor():
    env = {k: "" for k in arithmetic.PINNED}  # nothing inherited: pin() alone decides
    code = """
        from bench.arithmetic import describe, pin
        pin()
        print(describe())
    """
    assert _python(code, env) == "AVX2 kernels, MKL_CBWR=AVX2,STRICT"


def test_pinned_training_does_not_depend_on_the_thread_count():
    """The defining property: a concept generator trained (k-NN modularity loss, AdamW, clipping) on 1 and on 2
    threads ends with bit-identical weights; big enough that 2 threads split the gemms and the reductions, on an
    even patch grid (800 pixels) and an odd one (791: the softmax's unfused branch)."""
    code = """
        import hashlib, torch
        from acseg.assignment import cosine_assignment
        from acseg.concept_generator import ConceptGenerator
        from acseg.losses import Graph, concept_loss
        digests = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            gen = ConceptGenerator(384, n_prototypes=10, depth=2, width=128, heads=4, mlp_width=256,
                                   fixed_order=True)
            opt = torch.optim.AdamW(gen.parameters(), lr=1e-3, fused=True)
            data = torch.Generator().manual_seed(0)
            for step, pixels in enumerate((800, 791, 800, 791)):
                x = torch.randn(8, pixels, 384, generator=data)
                loss = concept_loss("modularity", x[:, :256], cosine_assignment(x, gen(x))[:, :256], Graph("knn", 13))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
                opt.step()
            weights = torch.cat([p.detach().flatten() for p in gen.parameters()]).numpy().tobytes()
            digests.append(hashlib.sha256(weights).hexdigest())
        print(*digests)
    """
    one, two = _python(code, arithmetic.PINNED).split()
    assert one == two


def test_the_cli_pins_only_processes_that_run_acseg_with_pinned_arithmetic(monkeypatch):
    from bench import cli

    calls = []
    monkeypatch.setattr(arithmetic, "pin", lambda: calls.append(1))
    pinned, native = make_config(**{"acseg.arithmetic": "pinned"}), make_config(**{"acseg.arithmetic": "native"})
    cli._arithmetic(native, ["acseg"])
    cli._arithmetic(pinned, ["kmeans", "stego"])
    assert calls == []
    cli._arithmetic(pinned, ["kmeans", "acseg"])
    assert calls == [1]


def test_arithmetic_is_recorded_with_acseg_runs_not_hashed():
    """Other methods' stored runs keep their hash; a stored ACSeg run is reused only under its own arithmetic (runs
    from before the option were native)."""
    from bench.methods import get_method

    pinned, native = make_config(**{"acseg.arithmetic": "pinned"}), make_config(**{"acseg.arithmetic": "native"})
    assert pinned.hash() == native.hash()
    acseg, kmeans = get_method("acseg"), get_method("kmeans")
    assert acseg.record(pinned) == {"arithmetic": "pinned"} and kmeans.record(pinned) == {}
    assert acseg.reusable(pinned, {"arithmetic": "pinned"}) and not acseg.reusable(native, {"arithmetic": "pinned"})
    assert acseg.reusable(native, {}) and not acseg.reusable(pinned, {})
    assert kmeans.reusable(pinned, {})
