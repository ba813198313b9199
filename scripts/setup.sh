#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv with exactly the locked versions
# (requirements/lock.txt; RECAP_CUDA=12 for JAX on CUDA 12: requirements/lock-cuda12.txt).
# Idempotent: it re-installs only when the lock, pyproject.toml or this script changed since the
# last successful run. Refresh the lock with `bash scripts/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${RECAP_CUDA:-}" in
  "") lock=requirements/lock.txt ;;
  12) lock=requirements/lock-cuda12.txt ;;
  *) echo "RECAP_CUDA=${RECAP_CUDA}: the locks are for CPU (unset) and CUDA 12 (RECAP_CUDA=12)" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.recap-setup
want=$(cat pyproject.toml scripts/setup.sh "$lock" requirements/tools.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setting up .venv from $lock (first time: a few minutes; lerobot brings torch)" >&2
  # pip only bootstraps uv (pinned and hashed); uv installs the lock: exactly its versions and
  # hashes, and nothing else (a package not in the lock is removed).
  # tools.txt: uv itself, and openpi-client, whose metadata pins numpy<2 although it runs on numpy 2
  # (tests use it to prove unchanged openpi clients talk to `recap serve`); sync installs no deps.
  .venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements/tools.txt
  .venv/bin/uv pip sync -q --python .venv/bin/python --require-hashes "$lock" requirements/tools.txt
  # recap itself, editable, built with the lock's setuptools (nothing unpinned is fetched)
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
