"""Timing, memory and FLOP-counting helpers: the low layer under every speed number of the harness (the
performance suite, :mod:`bench.perf`, and the concept-generator study's speed columns, :mod:`bench.generators`).

Only torch and the standard library: nothing here imports the rest of the harness, so any module may use it.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


@dataclass
class Measure:
    """One row of performance.csv; ``note`` (how it was measured) goes to performance.md only."""

    measure: str
    value: float
    unit: str
    note: str = ""


def ratio(name: str, numerator: Measure, denominator: Measure, note: str = "") -> Measure:
    """A ratio of two measured rows (never timed on its own)."""
    return Measure(name, numerator.value / denominator.value, "x",
                   note or f"{numerator.measure} / {denominator.measure}")


# ------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA; nothing to wait for elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """(what ``fn()`` returns, its wall time in seconds), CUDA synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call (CUDA synchronised before and after)."""
    return timed(fn, device)[1]


def rate(fn: Callable[[], object], items: int, device: torch.device, min_seconds: float) -> float:
    """Items per second of ``fn`` (which handles ``items`` items), repeated until ``min_seconds`` have passed."""
    total, calls = 0.0, 0
    while calls == 0 or total < min_seconds:
        total += seconds(fn, device)
        calls += 1
    return items * calls / total


@contextmanager
def step_clock(device: torch.device) -> Iterator[list[tuple[int, float]]]:
    """Timestamps (optimizer id, time) after every optimizer step taken inside the block (torch's global step
    hook), so a training loop can be timed step by step without changing it."""
    stamps: list[tuple[int, float]] = []

    def hook(optimizer, args, kwargs):
        synchronize(device)
        stamps.append((id(optimizer), time.perf_counter()))

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield stamps
    finally:
        handle.remove()


def steps_per_second(stamps: list[tuple[int, float]], warmup: int, steps: int) -> float:
    """Steps per second from the end of step ``warmup`` to the end of step ``warmup + steps``; with several
    optimizers a step is timed by the first one that steps."""
    if warmup < 1:
        raise ValueError("timing training steps needs at least one warm-up step")
    first = stamps[0][0]
    ends = [t for opt, t in stamps if opt == first]
    return steps / (ends[warmup + steps - 1] - ends[warmup - 1])


# ------------------------------------------------------------------------------------------------- memory


def status_mb(*fields: str) -> dict[str, float]:
    """Fields of /proc/self/status (Linux; empty elsewhere) in MB: VmHWM (peak resident), RssAnon, RssFile."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in lines) if k in fields}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM (Linux). Not ru_maxrss: Linux carries the parent's peak
    over fork and exec into the child's ru_maxrss, so a spawned child would report at least its parent's peak."""
    peak = status_mb("VmHWM")
    if peak:
        return peak["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux (bytes on macOS)


# -------------------------------------------------------------------------------------------------- FLOPs


def matmul_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (and convolutions, attention kernels) of one call of ``fn``, as torch's
    FlopCounterMode counts them (a multiply-add is 2 FLOPs; element-wise work and eigendecompositions are not
    counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
