#!/usr/bin/env bash
# The small-scale reproduction recorded in docs/results.md: a ~5M-parameter Llama trained
# from scratch on NL-RX-SYNTH (../shared/data/llm_jepa), next-token vs LLM-JEPA, 3 seeds
# each, scored by exact match (and startswith) on synth_test. About 30 minutes on 2 idle CPU cores (EPOCHS=1).
#   bash tools/repro_synth.sh [out_folder]
# Then: python tools/sweep_table.py (see docs/results.md) builds the table and plot.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-sweeps/repro_synth}
EPOCHS=${EPOCHS:-1}
TEST=../shared/data/llm_jepa/synth_test.jsonl
declare -A ARMS=(
  [ntp]="--jepa.enable false"
  [jepa]="--jepa.enable true --jepa.lambda 2 --jepa.k 3"
)
for seed in 82 23 37; do
  for arm in ntp jepa; do
    name="${arm}_s${seed}"
    if [[ -f "$OUT/$name.json" ]]; then echo "skip $name (done)"; continue; fi
    start=$(date +%s)
    # shellcheck disable=SC2086
    python -m titan_jepa.train --config train_configs/repro_synth_small.toml \
      --job.seed "$seed" --job.name "$name" --job.dump_folder "$OUT/runs" \
      --data.num_epochs "$EPOCHS" ${ARMS[$arm]} > "$OUT/$name.train.log" 2>&1
    python -m titan_jepa.eval --config "$OUT/runs/$name/config.toml" \
      --checkpoint "$OUT/runs/$name/checkpoint" --data "$TEST" --scorer exact \
      --batch-size 64 --max-new-tokens 64 --no-progress --out "$OUT/$name.json" > "$OUT/$name.eval.log" 2>&1
    echo "$name: $(tail -1 "$OUT/$name.eval.log") ($(( $(date +%s) - start ))s)"
  done
done
