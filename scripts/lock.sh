#!/usr/bin/env bash
# Refresh the lock files that scripts/setup.sh installs (maintainers; needs the package index).
#   requirements/lock.txt         Linux x86_64, Python 3.11, CPU JAX, with the dev extra (the default)
#   requirements/lock-cuda12.txt  the same with JAX for CUDA 12 (RECAP_CUDA=12 bash scripts/setup.sh)
#   requirements/tools.txt        uv itself, and openpi-client (installed without its numpy<2 pin)
#   recap_core/tested_versions.json  the stack's locked versions, shipped in the wheel for `recap doctor`
# pyproject.toml keeps open ranges for people who use recap as a library. After a refresh: run
# `bash scripts/test.sh`, and record the refresh (and what moved) in CHANGELOG.md.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
if [ ! -x "$UV" ] && ! command -v "$UV" >/dev/null 2>&1; then
  echo "uv not found at $UV: run bash scripts/setup.sh first, or UV=/path/to/uv bash scripts/lock.sh" >&2
  exit 2
fi
old=$(mktemp)
trap 'rm -f "$old"' EXIT
[ -f requirements/lock.txt ] && cp requirements/lock.txt "$old"
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet
        --custom-compile-command "bash scripts/lock.sh")
"$UV" pip compile pyproject.toml --extra dev "${common[@]}" -o requirements/lock.txt
"$UV" pip compile pyproject.toml --extra dev --extra cuda12 "${common[@]}" -o requirements/lock-cuda12.txt
printf 'uv==0.13.10\nopenpi-client==0.1.2\n' | "$UV" pip compile - --no-deps "${common[@]}" -o requirements/tools.txt
"${PYTHON:-.venv/bin/python}" - <<'PY'
import json, re
from pathlib import Path
from recap_core.stack import STACK as stack  # the packages `recap --version` and doctor report
pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", Path("requirements/lock.txt").read_text(), re.M))
pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
missing = [name for name in stack if name not in pins]
if missing:
    raise SystemExit(f"requirements/lock.txt lacks {missing}")
out = {"lock": "requirements/lock.txt", "versions": {name: pins[name] for name in stack}}
Path("recap_core/tested_versions.json").write_text(json.dumps(out, indent=2) + "\n")
PY
if [ -s "$old" ]; then
  echo "changed pins (old -> new):"
  diff <(grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' "$old") <(grep -oE '^[A-Za-z0-9_.-]+==[^ ]+' requirements/lock.txt) \
    | grep -E '^[<>]' || echo "  none"
fi
