#!/usr/bin/env bash
# The GPU check of the performance suite, one short script for a machine with a CUDA GPU, this repository with
# its venv installed (.venv) and ../shared (data/CamVid, weights/) beside it:
#   1. the gpu-marked tests (tests/bench/test_gpu.py: float16-autocast features against float32 within stated
#      tolerances; training and evaluation of every method with --device cuda; metrics back);
#   2. `acseg-bench perf --device cuda --out reports/gpu` on the first images of CamVid (perf extracts the 24
#      evaluation and 80 training images it needs on the GPU, into a temporary cache; no `dvc repro` needed);
#   3. reports/performance_gpu.{md,csv}: perf's report, the GPU named in it.
# Expected well under 10 minutes (each step has its own time limit, 9.5 minutes in all). Usage, from anywhere:
#   bash pipelines/gpu_check.sh             # needs CUDA: stops at once without it
#   bash pipelines/gpu_check.sh --dry-run   # no GPU needed: the same steps on the CPU, tiny, into a temporary
#                                           # folder (the tests' code through ACSEG_GPU_TEST_DEVICE=cpu); writes
#                                           # nothing in reports/
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=${ACSEG_SHARED_DIR:-$root/../shared}
py=$root/.venv/bin/python
bench=$root/.venv/bin/acseg-bench
export ACSEG_CAMVID_DIR=${ACSEG_CAMVID_DIR:-$shared/data/CamVid}
export ACSEG_STANFORD_BACKGROUND_DIR=${ACSEG_STANFORD_BACKGROUND_DIR:-$shared/data/StanfordBackground}
export ACSEG_WEIGHTS_DIR=${ACSEG_WEIGHTS_DIR:-$shared/weights}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true

dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: bash pipelines/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
for path in "$py" "$bench" "$ACSEG_CAMVID_DIR" "$ACSEG_WEIGHTS_DIR"; do
  [ -e "$path" ] || { echo "gpu_check: $path is missing (venv in .venv, ../shared beside the repository)" >&2; exit 2; }
done

start=$(date +%s)
if [ "$dry" = 1 ]; then
  device=cpu
  out=$(mktemp -d "${TMPDIR:-/tmp}/acseg-gpu-check-dry.XXXXXX")
  perf_sizes=(--images 2 --memory-images 2 --steps 2 --warmup-steps 1 --repeats 1 --min-seconds 0)
  test_limit=600 perf_limit=900  # the CPU is slow: the limits of a dry run are not the GPU's
  echo "gpu_check: DRY RUN on the CPU into $out"
else
  device=cuda
  out=$root/reports
  perf_sizes=(--images 24 --memory-images 40 --steps 20 --warmup-steps 3 --repeats 2 --min-seconds 2)
  test_limit=180 perf_limit=390
  "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is false): nothing run" >&2; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

echo "gpu_check: [1/3] gpu-marked tests ($device, at most ${test_limit} s)"
ACSEG_GPU_TEST_DEVICE=$device timeout "$test_limit" "$py" -m pytest -q -rs -m gpu tests/bench/test_gpu.py \
  -p no:cacheprovider
tests_s=$(( $(date +%s) - start ))

echo "gpu_check: [2/3] acseg-bench perf --device $device (at most ${perf_limit} s)"
# dvc repro timings are the CPU pipeline's (reports/repro_timing.json): not copied into the GPU's report
timeout "$perf_limit" "$bench" perf --device "$device" --out "$out/gpu" "${perf_sizes[@]}" \
  --repro-timing "$out/gpu/no-repro-timing.json" --quiet
total_s=$(( $(date +%s) - start ))

echo "gpu_check: [3/3] $out/performance_gpu.{md,csv}"
"$py" - "$out/gpu" "$out" "$tests_s" "$total_s" "$dry" <<'EOF'
import shutil, sys
from datetime import datetime, timezone
from pathlib import Path

src, dst, tests_s, total_s, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
md = (src / "performance.md").read_text()
import torch

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else "no GPU (dry run on the CPU)"
head = (f"Written by `bash pipelines/gpu_check.sh{' --dry-run' if dry else ''}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, GPU: **{gpu}** (gpu-marked tests passed in {tests_s} s; "
        f"tests and perf {total_s} s in all): perf's report below, written to `{src}` and moved here.\n\n")
title, _, rest = md.partition("\n")
for name, text in (("performance_gpu.md", f"{title} (GPU)\n\n{head}{rest.lstrip()}"),
                   ("performance_gpu.csv", (src / "performance.csv").read_text())):
    tmp = dst / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(dst / name)
shutil.rmtree(src)
print(f"-> {dst / 'performance_gpu.md'}, {dst / 'performance_gpu.csv'} (GPU: {gpu})")
EOF
echo "gpu_check: done in $(( $(date +%s) - start )) s"
