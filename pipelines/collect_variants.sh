#!/usr/bin/env bash
# Usage: bash pipelines/collect_variants.sh VARIANTS_DIR OUT_CSV
# The rows of variant runs laid out as VARIANTS_DIR/<variant>/<method>/seed<N>/ (pipelines/cpu_defaults.sh,
# pipelines/stego_variants.sh) in one tidy CSV: `acseg-bench results` collects each variant's runs, and their
# rows are stacked with the variant's name in front of each row's `run` into OUT_CSV (each variant's own
# results.csv and results_summary.json stay in its folder).
set -euo pipefail
dir=$1; out=$2
for variant in "$dir"/*/; do
    acseg-bench results -s "run.runs_dir=$variant" -s "run.results_csv=$variant/results.csv" > /dev/null
done
python - "$dir" "$out" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from bench.data import atomic_path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
frames = []
for csv in sorted(root.glob("*/results.csv")):
    df = pd.read_csv(csv)
    df["run"] = csv.parent.name + "/" + df["run"]
    frames.append(df)
rows = pd.concat(frames, ignore_index=True).sort_values(["method", "run"])
with atomic_path(out) as tmp:
    rows.to_csv(tmp, index=False)
print(f"{len(rows)} rows from {len(frames)} variants -> {out}")
PY
