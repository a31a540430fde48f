#!/usr/bin/env bash
# Create (or reuse) .venv and install acseg-bench with its test extras at the exact versions of requirements.lock,
# then the project itself (editable, no further dependencies). Idempotent; a few minutes on a fresh machine (torch
# is large).
#
# Refresh the lock after changing a dependency in pyproject.toml (needs uv: `python3 -m pip install uv`; versions
# already in the lock are kept where they still fit, add --upgrade to move everything to the newest):
#   uv pip compile pyproject.toml --extra test --universal --python-version 3.10 --no-python-downloads -o requirements.lock
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

# A machine whose pip configuration names extra local indexes makes pip warn, for every package they lack, that
# the location "is ignored"; that line says nothing about this install, so it is dropped. Everything else pip
# prints (errors, other warnings) is shown.
pip_install() {
    { .venv/bin/python -m pip install --quiet "$@" 2>&1 1>&3 3>&- \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; } 3>&1
}

pip_install --upgrade 'pip==26.3'
pip_install -r requirements.lock
pip_install --no-deps -e .
