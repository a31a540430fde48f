"""The suite's report: performance.csv (``measure,value,unit``) and performance.md (every row with how it was
measured, the performance targets, the paper's speed comparison, where the feature pipeline's time goes)."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

import torch

from bench.data import atomic_path, write_text_atomic
from bench.perf.common import PROFILE_PREFIX, TARGETS
from bench.timing import Measure
from bench.tracking import cpu_name


def machine(device: torch.device) -> dict[str, str]:
    """The machine a run measured on: processor, cores, torch and its threads, Python, the device."""
    info = {"cpu": cpu_name(), "cores": str(os.cpu_count()), "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["device"] += f" ({props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return info


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def write_report(rows: list[Measure], out: str | Path, command: str, machine_info: dict[str, str],
                 repro_cpu: str | None = None) -> tuple[Path, Path]:
    """performance.csv (measure,value,unit) and performance.md in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "performance.csv", out / "performance.md"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", "value", "unit"])
        writer.writerows([r.measure, f"{r.value:.6g}", r.unit] for r in rows)

    v = {r.measure: r.value for r in rows}
    processor = machine_info.get("cpu", "?")
    device = machine_info.get("device", "cpu")
    on = device if not device.startswith("cpu") else f"this CPU ({processor})"
    lines = ["# Performance", "", f"Regenerate with `{command}` (writes `{csv_path}` and this file).", "",
             f"Measured on **{on}**. Machine: " + ", ".join(f"{k} {val}" for k, val in machine_info.items()) + ".",
             "", "| measure | value | unit | how |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.measure} | {_fmt(r.value)} | {r.unit} | {r.note} |" for r in rows
              if not r.measure.startswith(PROFILE_PREFIX)]
    lines += ["", f"## Targets, on {on}", ""]
    for name, target in TARGETS.items():
        if name in v:
            lines.append(f"- `{name}` {_fmt(v[name])} (target <= {target}): "
                         f"{'**met**' if v[name] <= target else '**NOT met**'}")
    lines += _speed_claim(v)
    lines += _feature_profile(rows, v, gpu=not device.startswith("cpu"))
    if "dvc_repro_cold_s" in v:
        lines += ["", "## `dvc repro`", "",
                  f"- cold {_fmt(v['dvc_repro_cold_s'])} s, warm {_fmt(v['dvc_repro_warm_s'])} s, copied from the "
                  f"timing file (see the rows' notes), measured on "
                  f"{repro_cpu or 'a processor the timing file does not record (an older time_repro.sh)'}"
                  + ("" if not repro_cpu or repro_cpu == processor or not device.startswith("cpu") else
                     f", not this run's processor ({processor}): compare the two with care") + "."]
    lines += ["", "## Notes", "",
              "- All rows come from one run, side by side, so their ratios hold even when the machine is noisy; "
              "absolute rates depend on the machine and on the thread count above.",
              f"- Threads: {machine_info.get('torch threads', '?')} (torch's default, which follows "
              "OMP_NUM_THREADS, unless `--threads` is given; scikit-learn's BLAS and OpenMP are limited to the same "
              "number).",
              "- The concept step and the study's k-means generator (acseg.batched_kmeans, the code the concept-"
              "generator study runs) are timed on the same batches of 8 images (that is how ACSeg runs, and the "
              "k-means is batched the same way); scikit-learn's KMeans one image at a time "
              "(that is how it is run), all on the same centred patch features, feature centring included.",
              "- `acseg_inference_overhead` divides ACSeg's whole inference after the backbone (the model's forward "
              "to per-pixel classes at the label resolution) by the bare backbone forward of the feature measure, "
              "on the same images; the backbone's float16 autocast applies on a GPU, as in the pipeline.",
              "- Training rates time only the steps after the warm-up steps (an optimizer step hook), not the "
              "set-up; the config's steps are overridden, which changes the learning-rate schedule, not the cost.",
              "- Peak memory: each evaluation runs in a fresh spawned process reading a cache entry that holds "
              "exactly its N (or 2N) images, as `load_features` reads a split's entry; peak RSS is the child's "
              "VmHWM (its `ru_maxrss` would include the parent's peak, which Linux carries over fork and exec)."]
    if "dvc_repro_cold_s" not in v:
        lines += ["- `dvc_repro_cold_s` and `dvc_repro_warm_s` are not measured by this command (25-55 "
                  "minutes): run `bash pipelines/time_repro.sh`, which writes `reports/repro_timing.json`, then "
                  "this command again to copy them here."]
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _speed_claim(v: dict[str, float]) -> list[str]:
    """The paper's speed comparison: both speed-ups, the FLOPs per image and the rate each one reaches."""
    if "concept_step_images_per_s" not in v:
        return []
    lines = ["", "## The concept step against per-image k-means (the paper: 149 vs 2.4 images/s)", "",
             "| | images/s | GFLOP per image | GFLOP/s reached | concept step's speed-up |",
             "| --- | --- | --- | --- | --- |"]
    for what, speed, flops, speedup in (
            ("ACSeg's concept step (batches of 8)", "concept_step_images_per_s", "concept_step_gflop_per_image", None),
            ("scikit-learn KMeans per image, current defaults (the paper's comparison)",
             "sklearn_kmeans_per_image_images_per_s", "sklearn_kmeans_gflop_per_image",
             "concept_step_speedup_vs_sklearn_kmeans"),
            ("the study's k-means generator (acseg.batched_kmeans), batched like the concept step",
             "batched_kmeans_images_per_s",
             "batched_kmeans_gflop_per_image", "concept_step_speedup_vs_batched_kmeans")):
        if speed in v and flops in v:
            lines.append(f"| {what} | {_fmt(v[speed])} | {v[flops]:.4g} | {_fmt(v[speed] * v[flops])} | "
                         f"{_fmt(v[speedup]) + 'x' if speedup and speedup in v else ''} |")
    lines.append("")
    for speedup, speed, flops, what in (
            ("concept_step_speedup_vs_sklearn_kmeans", "sklearn_kmeans_per_image_images_per_s",
             "sklearn_kmeans_gflop_per_image", "scikit-learn's KMeans"),
            ("concept_step_speedup_vs_batched_kmeans", "batched_kmeans_images_per_s", "batched_kmeans_gflop_per_image",
             "the study's batched k-means (acseg.batched_kmeans)")):
        if {speedup, speed, flops, "concept_step_gflop_per_image"} <= set(v):
            work = v[flops] / v["concept_step_gflop_per_image"]
            use = v[speedup] / work
            lines.append(f"- vs {what}: {_fmt(v[speedup])}x = {work:.3g} (its FLOPs per image / the concept "
                         f"step's) x {use:.3g} (the concept step's GFLOP/s / its GFLOP/s)")
    return lines


def _feature_profile(rows: list[Measure], v: dict[str, float], gpu: bool = False) -> list[str]:
    """Where the feature pipeline's time goes, from its profiled round, against the bare forward."""
    stages = [r for r in rows if r.measure.startswith(PROFILE_PREFIX) and not r.measure.endswith("total_ms_per_image")]
    total = v.get(f"{PROFILE_PREFIX}total_ms_per_image")
    if not stages or not total or "features_bare_timm_images_per_s" not in v:
        return []
    bare_ms = 1000 / v["features_bare_timm_images_per_s"]
    lines = ["", "## Where the feature pipeline's time goes (cProfile of one more pipeline round)", "",
             f"The bare timm loop takes {bare_ms:.1f} ms per image; the profiled pipeline round "
             f"{total:.1f} ms per image (cProfile's own overhead included).", "",
             "| stage | ms per image | share of the round | what |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.measure[len(PROFILE_PREFIX):-len('_ms_per_image')]} | {r.value:.1f} | "
              f"{100 * r.value / total:.1f} % | {r.note} |" for r in stages]
    vit = v.get(f"{PROFILE_PREFIX}vit_forward_features_ms_per_image")
    load = v.get(f"{PROFILE_PREFIX}backbone_load_and_checksum_ms_per_image", 0.0)
    if vit:
        per_image = total - vit - load
        lines += ["", f"- Beyond the backbone's forward the round spends {total - vit:.1f} ms per image: "
                  f"{load:.1f} ms is the one-off backbone load spread over this run's images, {per_image:.1f} ms "
                  f"is per-image work (decoding, resizing, [CLS] attention, float16, the write).",
                  f"- Profiled ratio {total / vit:.3f}; without the one-off load (a whole split, where it is "
                  f"under 1 %) {(total - load) / vit:.3f}. The per-image work left is what a faster pipeline "
                  f"could remove: decoding and resizing run on the same cores as the forward, between batches."]
    if gpu:
        lines.append("- On a GPU the kernels run asynchronously: the profile puts the forward's time where the CPU "
                     "waits for it (the float16 copies to the CPU, in `other`), not in `vit_forward_features`.")
    return lines
