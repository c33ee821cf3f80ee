#!/usr/bin/env bash
# Issue 16, items 3-4: the paper's protocol at CPU scale (4 epochs, best-fit packing) and the
# low-data regime (1/16, 1/4 and all of synth_train), next-token vs LLM-JEPA vs STP, 3 seeds.
# Hours of CPU: every sweep runs with --resume, so rerunning this script continues where it
# stopped (commit sweeps/*/results.{json,md} as they finish; see docs/results.md).
#
#   bash tools/sweep_issue16.sh protocol|lowdata|all [sweep.py options, e.g. --jobs 2 or --dry-run]
#
# protocol: all of synth_train; baseline vs LLM-JEPA lambda 1 / k 1 (sweeps/i16_l1k1, 3 seeds) and
#           a one-seed probe of lambda 2 / k 3 (sweeps/i16_l2k3; L2K3_SEEDS="82 23 37" for all three).
# lowdata:  per fraction F in 1of16, 1of4, all: baseline vs LLM-JEPA ($JEPA_ARM, default
#           lambda 1 / k 1: set it to the better arm of `protocol`) in sweeps/i16_<F>_jepa (all
#           of the data with the default arm: the protocol's sweeps/i16_l1k1), and
#           baseline vs STP (random_span, linear predictor, lambda 0.02) in sweeps/i16_<F>_stp.
# Sweeps of the same data share their baseline runs: they are copied into the next sweep's
# folder and --resume skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?usage: bash tools/sweep_issue16.sh protocol|lowdata|all [sweep.py options]}; shift
EXTRA=("$@")
CONFIG=train_configs/repro_synth_small.toml
TRAIN=../shared/data/llm_jepa/synth_train.jsonl
SEEDS=(82 23 37)
JEPA_ARM=${JEPA_ARM:-"jepa.lambda=1 jepa.k=1"}
# the next-token (and STP) rows hold about twice the samples of a JEPA row: half the rows per step
NTP_ROWS="training.global_batch_size=4 training.local_batch_size=4"
STP_ARM="jepa.enable=false stp.enable=true stp.mode=random_span stp.linear_predictor=true stp.lambda=0.02 $NTP_ROWS"

sweep() {  # sweep OUT TRAIN_PATH ARM_OVERRIDES [SEEDS]  (4 epochs, best-fit packing over 64 samples)
  # shellcheck disable=SC2086
  python tools/sweep.py --config "$CONFIG" --seeds ${4:-${SEEDS[*]}} --baseline jepa.enable=false $NTP_ROWS \
    --grid $3 --set data.num_epochs=4 data.pack_buffer=64 data.path="$2" \
    --eval-data ../shared/data/llm_jepa/synth_test.jsonl --scorer exact --eval-batch-size 64 \
    --max-new-tokens 64 --resume --out "$1" "${EXTRA[@]}"
}

share_baseline() {  # share_baseline FROM TO: the finished (evaluated) baseline runs of FROM into TO
  [[ " ${EXTRA[*]} " == *" --dry-run "* ]] && return 0
  for s in "${SEEDS[@]}"; do
    [[ -f $1/evals/baseline_s$s.json ]] || continue  # not finished: TO trains its own
    for d in runs evals logs; do
      mkdir -p "$2/$d"
      cp -rn "$1/$d"/baseline_s"$s"* "$2/$d/"
    done
  done
  return 0
}

if [[ $WHAT == protocol || $WHAT == all ]]; then
  sweep sweeps/i16_l1k1 "$TRAIN" "jepa.lambda=1 jepa.k=1"
  share_baseline sweeps/i16_l1k1 sweeps/i16_l2k3
  sweep sweeps/i16_l2k3 "$TRAIN" "jepa.lambda=2 jepa.k=3" "${L2K3_SEEDS:-82}"
fi
if [[ $WHAT == lowdata || $WHAT == all ]]; then
  python tools/make_subset.py "$TRAIN" --fractions 1/16 1/4 --seed 0 --out-dir outputs/subsets
  for F in 1of16 1of4 all; do
    path=$TRAIN
    [[ $F == all ]] || path=outputs/subsets/synth_train_$F.jsonl
    jepa_sweep=sweeps/i16_${F}_jepa
    # all of the data with lambda 1 / k 1 is the protocol's sweep: the same runs
    [[ $F == all && $JEPA_ARM == "jepa.lambda=1 jepa.k=1" ]] && jepa_sweep=sweeps/i16_l1k1
    sweep "$jepa_sweep" "$path" "$JEPA_ARM"
    share_baseline "$jepa_sweep" "sweeps/i16_${F}_stp"
    sweep "sweeps/i16_${F}_stp" "$path" "$STP_ARM"
  done
fi
