#!/usr/bin/env bash
# The RECAP loop, round after round: collect with the current policy (the operator correcting it),
# convert + merge, train the value model, relabel, fine-tune, evaluate. Every round keeps its data
# and runs, so rounds can be compared and rolled back:
#
#   WORK/raw/demos, WORK/data/demos                  demonstrations (round 0)
#   WORK/runs/sft, WORK/eval_0.json                  pi0.5 SFT and its success rate
#   WORK/raw/rollouts_R, WORK/data/rollouts_R        round R's rollouts with corrections
#   WORK/data/all_R, WORK/data/all_R_labeled         everything so far, relabelled by round R's value model
#   WORK/runs/value_R, WORK/runs/policy_R            round R's value model and pi0.6 policy
#   WORK/eval_R.json                                 round R's success rate
#
#   bash examples/recap_loop.sh WORKDIR
#
# It runs on the built-in simulator (`recap sim`) with the tiny presets on a CPU. On a robot,
# replace `collect` below with your own collection (serve runs/policy_R with `recap serve`,
# record ALOHA HDF5 episodes with your client, the operator's takeovers flagged in /intervention)
# and set POLICY=pi05-lora FINETUNE=pi06-lora VALUE=value INIT=base VALUE_FLAGS= on a GPU box.
# Rerunning continues where it stopped: finished outputs are kept, training runs resume.
set -euo pipefail
WORK=$(mkdir -p "${1:?work dir}" && cd "$1" && pwd)
ROUNDS=${ROUNDS:-2}
TASK=${TASK:-handover-easy}
POLICY=${POLICY:-pi05-tiny}
FINETUNE=${FINETUNE:-pi06-tiny}
VALUE=${VALUE:-value-tiny}
INIT=${INIT:-random}
DEMOS=${DEMOS:-60}
ROLLOUTS=${ROLLOUTS:-40}
EVAL=${EVAL:-100}                   # evaluation episodes per round (0: skip)
SFT_STEPS=${SFT_STEPS:-800}
FT_STEPS=${FT_STEPS:-800}
VALUE_STEPS=${VALUE_STEPS:-600}
BATCH=${BATCH:-32}
VALUE_FLAGS=${VALUE_FLAGS:---freeze-mode none}  # random-init backbones must train
LABEL_FLAGS=${LABEL_FLAGS:---top-percent 30 --lookahead 50 --demos value}

step() { echo "== $*" >&2; }
json_field() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

collect() {  # collect ROUND POLICY_RUN RAW_OUT: the policy acts, the operator takes over when it drifts or stalls
  recap sim rollouts "$3" --policy "$2" --task "$TASK" --episodes "$ROLLOUTS" --seed $((10000 + 1000 * $1)) --json \
    > "$3.json"
}

evaluate() {  # evaluate RUN OUT_JSON: the same scenes every round
  [ "$EVAL" -gt 0 ] || return 0
  [ -f "$2" ] || recap eval "$1" --task "$TASK" --episodes "$EVAL" --seed 20000 --json > "$2"
}

# Round 0: demonstrations and SFT.
step "round 0: demos, SFT"
[ -d "$WORK/raw/demos" ] || recap sim demos "$WORK/raw/demos" --task "$TASK" --episodes "$DEMOS" --json \
  > "$WORK/demos.json"
FPS=$(json_field "$WORK/demos.json" fps)
[ -d "$WORK/data/demos" ] || recap convert aloha-hdf5 "$WORK/raw/demos" "$WORK/data/demos" --fps "$FPS" --task "$TASK"
recap sft "$WORK/data/demos" --preset "$POLICY" --init "$INIT" --run-dir "$WORK/runs/sft" --steps "$SFT_STEPS" \
  --batch-size "$BATCH" --delta-actions --resume
evaluate "$WORK/runs/sft" "$WORK/eval_0.json"

current="$WORK/runs/sft"
previous_data="$WORK/data/demos"
value_init="$INIT"
for r in $(seq 1 "$ROUNDS"); do
  step "round $r: rollouts of $current"
  [ -d "$WORK/raw/rollouts_$r" ] || collect "$r" "$current" "$WORK/raw/rollouts_$r"
  [ -d "$WORK/data/rollouts_$r" ] || recap convert aloha-hdf5 "$WORK/raw/rollouts_$r" "$WORK/data/rollouts_$r" \
    --fps "$FPS" --task "$TASK"
  [ -d "$WORK/data/all_$r" ] || recap data merge "$previous_data" "$WORK/data/rollouts_$r" --output "$WORK/data/all_$r"

  step "round $r: value model, labels"
  # shellcheck disable=SC2086  # the flag lists are meant to split
  recap value train "$WORK/data/all_$r" --preset "$VALUE" --init "$value_init" --run-dir "$WORK/runs/value_$r" \
    --steps "$VALUE_STEPS" --batch-size "$BATCH" $VALUE_FLAGS --resume
  # shellcheck disable=SC2086
  [ -d "$WORK/data/all_${r}_labeled" ] || recap value label "$WORK/data/all_$r" --checkpoint "$WORK/runs/value_$r" \
    --output "$WORK/data/all_${r}_labeled" $LABEL_FLAGS

  step "round $r: pi0.6 fine-tune from $current"
  recap finetune "$WORK/data/all_${r}_labeled" --preset "$FINETUNE" --init "$current" --run-dir "$WORK/runs/policy_$r" \
    --steps "$FT_STEPS" --batch-size "$BATCH" --resume
  evaluate "$WORK/runs/policy_$r" "$WORK/eval_$r.json"

  current="$WORK/runs/policy_$r"
  previous_data="$WORK/data/all_$r"
  value_init="$WORK/runs/value_$r"  # the next value model continues from this one
done

if [ "$EVAL" -gt 0 ]; then
  for r in $(seq 0 "$ROUNDS"); do
    printf 'round %s: success %s of %s episodes\n' "$r" "$(json_field "$WORK/eval_$r.json" successes)" "$EVAL"
  done
fi
echo "policy of the last round: $current"
