#!/usr/bin/env bash
# Container entrypoint: torchrun (through python -m titan_jepa.launch: one-line user errors,
# no ChildFailedError traceback) with its rendezvous taken from environment variables.
#
#   NNODES          number of nodes (default 1)
#   NPROC_PER_NODE  processes on this node (default: the GPUs nvidia-smi lists, else 1)
#   NODE_RANK       this node's rank, 0..NNODES-1 (default 0; c10d assigns ranks itself,
#                   the value only labels logs)
#   RDZV_ENDPOINT   host:port of the rendezvous on the head node (default MASTER_ADDR:MASTER_PORT
#                   when those are set; a single node without it runs --standalone)
#   RDZV_ID         job id shared by all nodes (default titan_jepa; use the scheduler's job id)
#   RDZV_BACKEND    default c10d
#   CONFIG_FILE     training config (default train_configs/llama3_8b_h200.toml)
#   MAX_RESTARTS    torchrun --max_restarts (default 0)
#   DRY_RUN=1       print the command instead of running it
#
# Arguments starting with "-" are passed to training (--section.key value overrides);
# anything else is run as a command instead (e.g. `bash`, `python -m titan_jepa.plan ...`).
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then
  exec "$@"
fi

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') && [[ $n -gt 0 ]]; then
    NPROC_PER_NODE=$n
  else
    NPROC_PER_NODE=1
  fi
fi
if [[ -z "${RDZV_ENDPOINT:-}" && -n "${MASTER_ADDR:-}" ]]; then
  RDZV_ENDPOINT="${MASTER_ADDR}:${MASTER_PORT:-29500}"
fi
CONFIG_FILE=${CONFIG_FILE:-train_configs/llama3_8b_h200.toml}

cmd=(python -m titan_jepa.launch --nnodes="${NNODES}" --nproc_per_node="${NPROC_PER_NODE}" --max_restarts="${MAX_RESTARTS:-0}")
if [[ -z "${RDZV_ENDPOINT:-}" ]]; then
  if [[ "${NNODES}" != 1 ]]; then
    echo "error: NNODES=${NNODES} needs RDZV_ENDPOINT=<head node host>:<port> (or MASTER_ADDR)" >&2
    exit 2
  fi
  cmd+=(--standalone)
else
  cmd+=(--node_rank="${NODE_RANK}" --rdzv_backend="${RDZV_BACKEND:-c10d}"
        --rdzv_endpoint="${RDZV_ENDPOINT}" --rdzv_id="${RDZV_ID:-titan_jepa}")
fi
cmd+=(-m titan_jepa.train --config "${CONFIG_FILE}" "$@")

export PYTHONUNBUFFERED=1
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
