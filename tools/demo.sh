#!/usr/bin/env bash
# The CPU demo on a fresh machine: set up .venv, generate the demo data, then train the
# debug Llama on 2 gloo processes (FSDP): 50 next-token steps on the text corpus, then 60
# LLM-JEPA steps on the NL-to-regex chat data (views packed into the same rows).
# Extra arguments go to both runs, e.g. bash tools/demo.sh --training.steps 10
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
. .venv/bin/activate
python tools/make_demo_data.py --out demo_data --seed 0
export OMP_NUM_THREADS=1
for config in debug_cpu debug_cpu_jepa; do
  echo "=== train_configs/${config}.toml ==="
  torchrun --standalone --nproc_per_node=2 -m titan_jepa.train \
    --config "train_configs/${config}.toml" "$@"
done
