"""Pinned CPU float arithmetic: the same numbers from a seed on any thread count and any x86-64 processor with AVX2.

ACSeg's training is chaotic (docs/findings/reproducibility.md): any difference in how float sums are rounded, which another
thread count or another processor brings, ends in another trained generator. Four things choose that rounding by
the machine, and each is pinned when ``acseg.arithmetic`` is ``pinned``:

- oneMKL, torch's BLAS on x86: its code branch follows the processor (AVX2, AVX-512), and a multi-threaded gemm
  splits its sums by the thread count. ``MKL_CBWR=AVX2,STRICT`` fixes the AVX2 branch and, in strict mode, makes
  ?gemm bitwise reproducible whatever the thread count (oneMKL developer guide, "Reproducibility Conditions").
- ATen's vectorised kernels sum a row 8 floats at a time with AVX2 and 16 with AVX-512:
  ``ATEN_CPU_CAPABILITY=avx2`` takes the AVX2 kernels on every processor that has them.
- LayerNorm's fused CPU backward sums its weight gradients in one buffer per thread, and the fused softmax backward
  rounds a row that is not a whole number of vectors by the thread count: the generator uses
  ``acseg.concept_generator.FixedOrderLayerNorm`` and ``fixed_order_softmax`` instead (``fixed_order=True``, set by
  bench/methods/acseg.py).

Both libraries read their variable once, when they first run: :func:`pin` must come before torch does any work in the
process (the CLI calls it right after reading the params); processes it starts inherit the variables (written, like
every environment variable, by bench/config.py).
"""

from __future__ import annotations

import logging
import sys

from bench.config import mkl_reproducibility, pin_arithmetic

log = logging.getLogger(__name__)

PINNED = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}


def pin() -> None:
    """Pin this process's (and its children's) arithmetic. Warns when torch already chose faster kernels in this
    process, which can then no longer change (the runs' ``arithmetic`` tag says what they used)."""
    pin_arithmetic(PINNED)
    if "torch" in sys.modules and capability().startswith("AVX512"):
        log.warning("acseg.arithmetic=pinned, but torch already runs its %s kernels in this process: set %s before "
                    "torch starts for numbers that other machines reproduce", capability(),
                    " ".join(f"{k}={v}" for k, v in PINNED.items()))


def capability() -> str:
    """The instruction set of the ATen kernels this process runs (AVX2, AVX512, DEFAULT, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def describe() -> str:
    """What a run's float arithmetic was, for its records: the ATen kernels and oneMKL's reproducibility setting."""
    return f"{capability()} kernels, MKL_CBWR={mkl_reproducibility()}"
