#!/usr/bin/env bash
# The checks that need a CUDA GPU (sm89+: H100/H200) and cannot run on the CPU CI machines.
# Each is a short debug-model run through the real entry point; the script stops at the first
# failure and prints what each check produced.
#
#   bash tools/gpu_check.sh            # NGPU defaults to the GPUs nvidia-smi lists (at most 2)
#
# Run folders go to $GPU_CHECK_WORK (default outputs/gpu_check); the four logs to $OUT when it is
# set (the device tool's result folder), else next to the runs. Runs from a plain checkout:
# PYTHONPATH is set to it here; python3 (or $PYTHON) and `python -m torch.distributed.run`.
#
# 1. flex:     model.attn_backend = "flex" (FlexAttention forward AND backward, compiled blocks)
#              on LLM-JEPA chat data; its losses equal the sdpa run's to 1e-3 (fp32).
# 2. float8:   torchao Float8Linear in the blocks (tensorwise), FSDP2 on NGPU ranks; trains
#              and logs MFU. Skipped, saying so, where torchao is not installed.
# 3. snapshot: a torch.profiler trace and a CUDA allocator memory snapshot of step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "error: no nvidia-smi: this script needs a CUDA machine" >&2; exit 2; }
NGPU=${NGPU:-$(( $(nvidia-smi -L | grep -c '^GPU') > 1 ? 2 : 1 ))}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python3 || command -v python)}
WORK=${GPU_CHECK_WORK:-outputs/gpu_check}
LOGS=${OUT:-$WORK}
mkdir -p "$WORK" "$LOGS"
"$PY" tools/make_demo_data.py --out demo_data >/dev/null
run() {  # run NAME CONFIG [overrides...]: a short run in $WORK/NAME, its log in $LOGS/NAME.log
  local name=$1 config=$2; shift 2
  "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m titan_jepa.train --config "$config" \
    --training.device "${DEVICE:-cuda}" --training.steps 6 --metrics.log_freq 1 --job.dump_folder "$WORK" \
    --job.name "$name" "$@" 2>&1 | tee "$LOGS/$name.log" | grep -E "step|error|done" || true
  grep -q "done:" "$LOGS/$name.log" || { echo "error: check '$name' failed, see $LOGS/$name.log" >&2; exit 1; }
}

echo "== 1. flex vs sdpa (LLM-JEPA, compiled blocks)"
run sdpa train_configs/debug_cpu_jepa.toml --compile.enable true --model.attn_backend sdpa
run flex train_configs/debug_cpu_jepa.toml --compile.enable true --model.attn_backend flex
"$PY" - "$WORK" <<'EOF'
import json, sys
rows = {n: [json.loads(l)["loss"] for l in open(f"{sys.argv[1]}/{n}/metrics.jsonl")] for n in ("sdpa", "flex")}
worst = max(abs(a - b) / abs(b) for a, b in zip(rows["flex"], rows["sdpa"]))
print(f"flex vs sdpa: max relative loss difference {worst:.2e} over {len(rows['flex'])} steps")
sys.exit(0 if worst < 1e-3 else 1)
EOF

if "$PY" -c "import torchao.float8" 2>/dev/null; then
  echo "== 2. float8 (torchao, FSDP2 on $NGPU GPU(s))"
  run float8 train_configs/debug_cpu.toml --float8.enable true --training.mixed_precision_param bfloat16
  grep -q "linear layers converted" "$LOGS/float8.log" || { echo "error: float8 did not convert" >&2; exit 1; }
  grep -o "mfu [0-9.]*%" "$LOGS/float8.log" | tail -1
else
  echo "== 2. float8: skipped, torchao is not installed (pip install torchao)"
fi

echo "== 3. profiler trace and CUDA memory snapshot of step 2"
run snapshot train_configs/debug_cpu.toml --profiling.enable_profiling true --profiling.profile_steps 2 --profiling.enable_memory_snapshot true
ls -la "$WORK"/snapshot/profile_traces/step2 "$WORK"/snapshot/memory_snapshot/step2
echo "all GPU checks passed"
