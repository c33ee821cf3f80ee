#!/usr/bin/env bash
# Thin torchrun wrapper, like torchtitan's run_train.sh:
#   NGPU=8 CONFIG_FILE=train_configs/llama3_8b_h200.toml tools/run_train.sh [--section.key value ...]
# NGPU is the number of processes on this node (GPUs, or CPU processes for gloo).
set -euo pipefail
NGPU=${NGPU:-1}
CONFIG_FILE=${CONFIG_FILE:-train_configs/debug_cpu.toml}
export PYTHONUNBUFFERED=1
# python -m titan_jepa.launch is torchrun with one-line user errors (no ChildFailedError traceback)
exec "${PYTHON:-python}" -m titan_jepa.launch --standalone --nproc_per_node="${NGPU}" \
  --local-ranks-filter="${LOG_RANK:-0}" --role=rank --tee=3 \
  -m titan_jepa.train --config "${CONFIG_FILE}" "$@"
