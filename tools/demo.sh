#!/usr/bin/env bash
# The CPU demo on a fresh machine: set up .venv, generate the demo data, train the debug
# Llama for 50 steps on 2 gloo processes (FSDP), then a short LLM-JEPA run when configured.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
. .venv/bin/activate
python tools/make_demo_data.py --out demo_data --seed 0
export OMP_NUM_THREADS=1
torchrun --standalone --nproc_per_node=2 -m titan_jepa.train \
  --config train_configs/debug_cpu.toml "$@"
