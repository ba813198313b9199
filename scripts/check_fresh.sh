#!/usr/bin/env bash
# Maintainers, not CI: does recap still work with the newest releases its open ranges allow?
# Resolves pyproject.toml anew (no lock, fresh index data) into a scratch venv, lists every package
# that moved against requirements/lock.txt, and runs the fast part of the suite (everything but the
# `slow` end-to-end tests) with it. A breaking upstream release shows up here before a user meets
# it; then fix recap (or cap the range) and refresh the lock (bash scripts/lock.sh).
# Record the last result and its date in benchmarks/RESULTS.md. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1  # for uv (the scratch venv is separate)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/recap-fresh.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
start=$(date +%s)
base=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
.venv/bin/uv venv -q --python "$base" "$scratch/venv" || exit 1
py="$scratch/venv/bin/python"
.venv/bin/uv pip install -q --python "$py" --refresh -e ".[dev]" || exit 1
.venv/bin/uv pip install -q --python "$py" --no-deps --require-hashes -r requirements/tools.txt || exit 1
moved=$("$py" - <<'PY'
import json, re
from importlib import metadata
from pathlib import Path
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
text = Path("requirements/lock.txt").read_text() + Path("requirements/tools.txt").read_text()
lock = {norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.M)}
now = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
print(json.dumps({n: [lock.get(n), now.get(n)] for n in sorted(set(lock) | set(now))
                  if n != "recap" and lock.get(n) != now.get(n)}))
PY
)
echo "moved against the lock (locked, resolved now): $moved" >&2
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export JAX_COMPILATION_CACHE_DIR="$scratch/jax-cache"
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
# The two tests that check the environment *is* the lock are expected to differ here.
"$py" -m pytest -n "${RECAP_TEST_WORKERS:-2}" --dist loadfile -m "not slow" -q -p no:cacheprovider \
  --deselect tests/test_install.py::test_installed_distributions_are_exactly_the_lock \
  --deselect tests/test_install.py::test_installed_wheel_runs_from_an_empty_directory \
  --deselect tests/test_install.py::test_locks_agree_with_each_other_and_with_the_shipped_table "$@"
rc=$?
printf '{"date": "%s", "pytest_exit": %d, "seconds": %d, "moved": %s}\n' "$(date -u +%F)" "$rc" \
  "$(( $(date +%s) - start ))" "$moved"
exit "$rc"
