#!/usr/bin/env bash
# Create (or reuse) .venv and install acseg-bench with its test extras. Idempotent; about 3 minutes on a
# fresh machine (torch is large).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
