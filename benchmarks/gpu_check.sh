#!/usr/bin/env bash
# The one script to run when an accelerator is lent (issue 22): smoke steps of the LoRA policy presets
# and the value model at real size with the doctor's memory prediction beside the measured peak, label
# frames/s of the value preset at batch 8 and 32, and serve p50/p99 of a pi0.6 policy with 3 cameras.
# Every section is one JSON file in OUT_DIR, and summary.json holds them all; paste the figures and the
# card into benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # real sizes on the accelerator (~10 minutes)
#   bash benchmarks/gpu_check.sh --dry [OUT_DIR]    # the same steps with tiny presets on CPU (tests)
#
# Weights are random (--init random): the figures are about memory and speed, not quality.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODE=real
if [ "${1:-}" = "--dry" ]; then MODE=dry; shift; fi
OUT=$(realpath -m "${1:-benchmarks/gpu_check_out}")
mkdir -p "$OUT"
if [ "$MODE" = dry ]; then
  export JAX_PLATFORMS=cpu
  # The smoke-step section sizes the value preset only: the policy presets' step, estimate and peak go
  # through the same code (tests/train/test_memory.py checks a policy's estimate), and the pi06-tiny
  # run below trains, saves and serves a policy. The dry run (in the test suite) checks the wiring.
  POLICY=(); VALUE=value-tiny; SERVE=pi06-tiny; IMAGE=32; STEPS=1; REQUESTS=3
else
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  POLICY=(pi05-lora pi06-lora); VALUE=value; SERVE=pi06-lora; IMAGE=224; STEPS=3; REQUESTS=50
fi
export HF_HUB_OFFLINE=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say() { echo "gpu_check ($MODE): $*" >&2; }

say "doctor"
$PY -m recap_cli.main doctor --json > "$OUT/doctor.json" || true  # a failed check is a figure too

say "smoke steps: ${POLICY[*]:-} $VALUE (predicted vs measured memory)"
$PY benchmarks/train_memory.py --presets ${POLICY[@]+"${POLICY[@]}"} "$VALUE" --steps "$STEPS" > "$OUT/train.json"

say "a random-init $VALUE run and a $SERVE run to label with and to serve"
$PY - "$WORK" "$IMAGE" <<'PY'
import sys
from pathlib import Path

from recap_core.data.synthetic import make_dataset

root, size = Path(sys.argv[1]), int(sys.argv[2])
make_dataset(root / "ds", episodes=4, frames=40, image_size=size,
             cameras=("cam_high", "cam_left_wrist", "cam_right_wrist"))
PY
TOK=$($PY -c "from pathlib import Path; from recap_core.models.tokenizer import build_toy_tokenizer; print(build_toy_tokenizer(Path('$WORK/tok.model')))")
common=(--init random --steps 1 --batch-size 1 --no-preflight --json --set "tokenizer=$TOK" --set val.fraction=0)
$PY -m recap_cli.main value train "$WORK/ds" --preset "$VALUE" --run-dir "$WORK/value" "${common[@]}" > /dev/null
$PY -m recap_cli.main finetune "$WORK/ds" --preset "$SERVE" --run-dir "$WORK/policy" "${common[@]}" \
  --no-keep-optimizer > /dev/null

say "label frames/s at batch 8 and 32"
$PY benchmarks/label.py --frames 10000 --episodes 4 --episode-frames 40 --checkpoint "$WORK/value" \
  --batch-sizes 8 32 > "$OUT/label.json"

say "serve latency of $SERVE with 3 cameras"
$PY benchmarks/serve.py --policy "$WORK/policy" --clients 1 --requests "$REQUESTS" --cameras 3 > "$OUT/serve.json"

$PY - "$OUT" "$MODE" <<'PY'
import json, sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
summary = {"mode": mode}
for name in ("doctor", "train", "label", "serve"):
    text = (out / f"{name}.json").read_text()
    summary[name] = json.loads(text) if text.strip() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
PY
