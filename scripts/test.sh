#!/usr/bin/env bash
# Set up the environment and run the whole test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Tests build the same tiny models many times: share compiled executables between them.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax}
# The tests run tiny models for a few steps: compiling dominates, so skip LLVM's optimisations on the
# CPU backend (a tiny pi0.5 train step compiles in a third of the time; same programs, same results
# to float rounding). Benchmarks and real runs keep the default.
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
.venv/bin/ruff check . || exit 1
# The episode viewer's browser test (tests/data/test_view.py) runs headless Chromium; it skips without one.
if command -v chromium >/dev/null 2>&1; then
  :
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the viewer's browser test" >&2
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } >/dev/null \
    || echo "could not install chromium: tests/data/test_view.py skips its browser test" >&2
else
  echo "chromium is not installed (needs root and apt-get to install it): tests/data/test_view.py skips its browser test" >&2
fi
# Two workers (CI has 2 cores), one test file per worker at a time: files share their fixtures.
# Files are handed out in collection order (tests/conftest.py puts the long end-to-end ones first),
# not xdist's default of most tests first, which started the longest file last.
# RECAP_TEST_WORKERS=0 runs everything in this process.
.venv/bin/python -m pytest -n "${RECAP_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=20 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: that is a failure" >&2
  exit 1
fi
exit "$rc"
