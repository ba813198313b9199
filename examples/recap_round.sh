#!/usr/bin/env bash
# One RECAP round as a robot operator runs it, from raw ALOHA/YAM HDF5 episodes to a served
# pi0.6 policy. Every stage writes a new directory; nothing is modified in place.
#
#   bash examples/recap_round.sh RAW_DEMOS RAW_ROLLOUTS WORKDIR
#
# Use the real presets (pi05-lora / pi06-lora / value) on a GPU box; swap in the -tiny presets
# and `--init random` to try the plumbing on a laptop.
set -euo pipefail
RAW_DEMOS=${1:?raw demo episodes dir}
RAW_ROLLOUTS=${2:?raw rollout episodes dir}
WORK=${3:?work dir}
TASK=${TASK:-"hand over the vial"}
FPS=${FPS:-30}
POLICY=${POLICY:-pi05-lora}
FINETUNE=${FINETUNE:-pi06-lora}
VALUE=${VALUE:-value}
INIT=${INIT:-base}

recap doctor --stage all --strict || echo "doctor reported problems; fix them before a long run" >&2

# Stage 1: raw episodes -> LeRobot v3.0 with the five RECAP columns, then merge rounds.
recap convert aloha-hdf5 "$RAW_DEMOS" "$WORK/demos" --fps "$FPS" --task "$TASK"
recap convert aloha-hdf5 "$RAW_ROLLOUTS" "$WORK/rollouts" --fps "$FPS" --task "$TASK"
recap data merge "$WORK/demos" "$WORK/rollouts" --output "$WORK/round1"
recap data inspect "$WORK/round1"

# Stage 2: pi0.5 SFT on the demos.
recap sft "$WORK/demos" --preset "$POLICY" --init "$INIT" --run-dir "$WORK/runs/sft"
# Stage 3: pi0.6 fine-tune with the converter's advantage labels.
recap finetune "$WORK/round1" --preset "$FINETUNE" --init "$WORK/runs/sft" --run-dir "$WORK/runs/stage3"
# Stage 4: the value model.
recap value train "$WORK/round1" --preset "$VALUE" --init "$INIT" --run-dir "$WORK/runs/value"
# Stage 5: relabel advantages into a NEW dataset (the original stays intact).
recap value label "$WORK/round1" --checkpoint "$WORK/runs/value" --top-percent 30 \
  --output "$WORK/round1_labeled" --report "$WORK/label_report"
# Stage 6: continue the pi0.6 fine-tune on the relabelled data.
recap finetune "$WORK/round1_labeled" --preset "$FINETUNE" --init "$WORK/runs/stage3" --run-dir "$WORK/runs/stage6"

# Serve to the robot (openpi websocket protocol; clients send adv_ind or get "positive").
recap serve "$WORK/runs/stage6" --port 8000
