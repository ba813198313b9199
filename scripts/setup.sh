#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent: it re-installs
# only when pyproject.toml or this script changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.recap-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up .venv (first time: a few minutes; lerobot brings torch)" >&2
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  # openpi-client pins numpy<2 in its metadata but runs on numpy 2; --no-deps keeps the JAX
  # stack intact. Tests use it to prove unchanged openpi clients talk to `recap serve`.
  .venv/bin/python -m pip install -q --no-deps "openpi-client==0.1.2"
  echo "$want" > "$stamp"
fi
