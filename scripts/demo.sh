#!/usr/bin/env bash
# Set up the environment and run the main job: the whole RECAP loop on the built-in toy task,
# on CPU. Extra arguments go to `recap demo` (e.g. --fast, --seed 1, --workdir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} HF_HUB_OFFLINE=1
exec .venv/bin/recap demo "$@"
