#!/usr/bin/env bash
# Wall time of the whole pipeline, for `acseg-bench perf` (rows dvc_repro_cold_s and dvc_repro_warm_s):
#   cold: the caches deleted (features, STEGO's calibrations and trained heads), then `dvc repro --force` (every
#   stage runs, features included);
#   warm: right after, `dvc repro` with nothing changed (every output and cache present: nothing to run).
# Writes reports/repro_timing.json {cold_s, warm_s, commit, date, command}; `acseg-bench perf` copies it into
# reports/performance.{csv,md}, and every stage's own wall time to reports/repro_stages.csv (from the log). Run
# from the repository root with the environment of the README. It deletes cache/ (the cold run makes it again).
#   bash pipelines/time_repro.sh --warm   times the warm run alone (the pipeline must be up to date) and updates
#                                         warm_s in the record, keeping the cold run's numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
out=reports/repro_timing.json
commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then commit="$commit-dirty"; fi
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

if [ "${1:-}" = "--warm" ]; then
    dvc status | grep -q "Data and pipelines are up to date" || { echo "dvc status: not up to date" >&2; exit 1; }
    start=$(date +%s.%N)
    dvc repro
    warm=$(python -c "print(round($(date +%s.%N) - $start, 1))")
    python - "$out" "$warm" "$commit" "$date" <<'EOF'
import json, sys
from pathlib import Path

out, warm, commit, date = sys.argv[1:]
path = Path(out)
record = json.loads(path.read_text())
record.update(warm_s=float(warm), warm_commit=commit, warm_date=date)
tmp = path.with_name(f".{path.name}.tmp")
tmp.write_text(json.dumps(record, indent=2) + "\n")
tmp.replace(path)
print(f"warm {warm} s -> {out}")
EOF
    exit 0
fi

rm -rf cache
start=$(date +%s.%N)
dvc repro --force 2>&1 | python -u -c '
import sys, time
for line in sys.stdin:
    sys.stdout.write(f"{time.time():.1f} {line}")
    sys.stdout.flush()
' | tee reports/.repro.log
cold=$(python -c "print(round($(date +%s.%N) - $start, 1))")
python - reports/.repro.log reports/repro_stages.csv <<'EOF'
import re, sys
stamps = [(float(t), rest) for t, rest in (line.split(" ", 1) for line in open(sys.argv[1]) if " " in line)]
starts = [(t, m.group(1)) for t, rest in stamps if (m := re.match(r"Running stage '([^']+)'", rest))]
end = stamps[-1][0]
with open(sys.argv[2], "w") as out:
    out.write("stage,seconds\n")
    for (t, stage), (t_next, _) in zip(starts, starts[1:] + [(end, "")]):
        out.write(f"{stage},{t_next - t:.1f}\n")
EOF

start=$(date +%s.%N)
dvc repro
warm=$(python -c "print(round($(date +%s.%N) - $start, 1))")

python - "$out" "$cold" "$warm" "$commit" "$date" <<'EOF'
import json, sys
from pathlib import Path

out, cold, warm, commit, date = sys.argv[1:]
record = {"cold_s": float(cold), "warm_s": float(warm), "commit": commit, "date": date,
          "command": "bash pipelines/time_repro.sh (rm -rf cache; time dvc repro --force; "
                     "time dvc repro)", "cpu": open("/proc/cpuinfo").read().split("model name")[1].split(":")[1]
                     .splitlines()[0].strip()}
path = Path(out)
path.parent.mkdir(parents=True, exist_ok=True)
tmp = path.with_name(f".{path.name}.tmp")
tmp.write_text(json.dumps(record, indent=2) + "\n")
tmp.replace(path)
print(f"cold {cold} s, warm {warm} s -> {out}")
EOF
