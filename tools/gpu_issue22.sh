#!/usr/bin/env bash
# Issue 22's GPU part on one device-machine call: SmolLM2-135M-Instruct fine-tuned on all 8,000
# synth_train samples for 4 epochs in bf16, next-token vs LLM-JEPA (lambda 1, k 1) vs STP
# (random_span, lambda 0.02), seeds 82 23 37 84 4, exact match on all 2,000 synth_test lines;
# the recipe of tools/sweep_issue22.sh (rows, lr 8e-5, schedule) but the full training set,
# shuffled by seed, and bf16 compute (torch.autocast on one GPU: titan_jepa.parallel.parallelize).
#
#   bash tools/gpu_issue22.sh            # on the device machine (docs/gpu.md, "Issue 22")
#   bash tools/gpu_issue22.sh --smoke    # here, on the CPU: one seed, 2 steps, 4 test lines
#
# The weights: the GGUF file (94 MiB) is over the 64 MiB one device call carries, so
# tools/gpu_prepare.sh splits it into .gpu_carry_w1/ and .gpu_carry_w2/ (one per call, the
# first call only uploads) with its sha256; this script joins and checks the parts, installs
# the carried gguf wheel when gguf is missing, and imports the model with tools/import_gguf.py.
# The runs go through tools/sweep.py (--jobs runs at once sharing the GPU, --share-gpus),
# stopped after BUDGET_S seconds (SIGTERM: a run in flight saves its step and is not
# evaluated); what finished is packed into $OUT/i22_gpu.tgz (sweeps/i22_gpu/ here) beside
# $OUT/results.md and $OUT/gpu_issue22.log.
#
# Environment: OUT (default outputs/gpu_issue22), BUDGET_S (480), JOBS (5), SEEDS ("82 23 37 84 4"),
# WORK (scratch: the imported model, the run folders; default /tmp/gpu_issue22).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [[ ${1:-} == --smoke ]]; then SMOKE=1; elif [[ $# -gt 0 ]]; then
  echo "usage: bash tools/gpu_issue22.sh [--smoke]" >&2; exit 2
fi
OUT=${OUT:-outputs/gpu_issue22}
WORK=${WORK:-/tmp/gpu_issue22}
BUDGET_S=${BUDGET_S:-480}
JOBS=${JOBS:-5}
read -r -a SEEDS <<< "${SEEDS:-82 23 37 84 4}"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PART1=.gpu_carry_w1/$NAME.part1
PART2=.gpu_carry_w2/$NAME.part2
SUM=.gpu_carry_w2/$NAME.sha256
MODEL=$WORK/SmolLM2-135M-Instruct
t0=$(date +%s)
say() { echo "[gpu_issue22 $(( $(date +%s) - t0 ))s] $*"; }

# ---- the model, from the two carried parts --------------------------------------------------
if [[ ! -f $MODEL/config.json ]]; then
  for f in "$PART1" "$PART2" "$SUM"; do
    [[ -f $f ]] || { echo "error: $f not found: run bash tools/gpu_prepare.sh here, and carry .gpu_carry_w1 in a first call, .gpu_carry_w2 in the second (docs/gpu.md, Issue 22)" >&2; exit 2; }
  done
  cat "$PART1" "$PART2" > "$WORK/$NAME"
  echo "$(cat "$SUM")  $WORK/$NAME" | sha256sum -c --quiet - \
    || { echo "error: the joined $NAME does not match its sha256: rerun bash tools/gpu_prepare.sh and carry both parts again" >&2; exit 2; }
  if ! "$PY" -c "import gguf" 2>/dev/null; then
    compgen -G ".whl/gguf-*.whl" >/dev/null || { echo "error: gguf is not installed and .whl/gguf-*.whl is not carried (bash tools/gpu_prepare.sh downloads it)" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/gguf-*.whl
    export PYTHONPATH=$PYTHONPATH:$WORK/site
  fi
  "$PY" tools/import_gguf.py --gguf "$WORK/$NAME" --out "$MODEL"
  rm -f "$WORK/$NAME"
  say "model imported to $MODEL"
fi
TRAIN=.gpu_carry/synth_train.jsonl
TEST=.gpu_carry/synth_test.jsonl
for f in $TRAIN $TEST; do
  [[ -f $f ]] || { echo "error: $f not found: run bash tools/gpu_prepare.sh and carry .gpu_carry" >&2; exit 2; }
done

# ---- the sweep -------------------------------------------------------------------------------
NTP_ROWS="training.global_batch_size=2 training.local_batch_size=2"
SET=(optimizer.lr=8e-5 data.path=$TRAIN data.num_epochs=4 data.shuffle_buffer=8000
     training.mixed_precision_param=bfloat16 checkpoint.initial_load_path=$MODEL
     tokenizer.path=$MODEL/tokenizer.json)
EXTRA=()
if [[ $SMOKE == 1 ]]; then
  SEEDS=(82); JOBS=1
  SET+=(training.steps=2)  # CPU: two steps (bf16 autocast too), four test lines
  EXTRA+=(--eval-limit 4)
fi
# shellcheck disable=SC2086
ARGS=(--config train_configs/smollm2_135m_jepa_synth.toml --seeds "${SEEDS[@]}"
      --baseline jepa.enable=false $NTP_ROWS
      --arm "llm-jepa jepa.enable=true jepa.lambda=1 jepa.k=1"
      --arm "stp jepa.enable=false stp.enable=true stp.mode=random_span stp.linear_predictor=true stp.lambda=0.02 $NTP_ROWS"
      --set "${SET[@]}"
      --eval-data $TEST --scorer exact --eval-batch-size 64 --max-new-tokens 64 "${EXTRA[@]}"
      --resume --out "$WORK/i22_gpu" --jobs "$JOBS" --drop-checkpoints)  # 2.3 GB a run otherwise
[[ $JOBS -gt 1 ]] && ARGS+=(--share-gpus)
say "sweep: ${#SEEDS[@]} seed(s) x 3 arms, $JOBS at once, stopped after ${BUDGET_S}s"
rc=0
timeout --signal=TERM --kill-after=60 "$BUDGET_S" "$PY" tools/sweep.py "${ARGS[@]}" || rc=$?
if [[ $rc == 124 ]]; then say "budget reached: the runs that finished are in the report"; elif [[ $rc != 0 ]]; then say "sweep exit $rc"; fi

# ---- what comes back: the small files only ---------------------------------------------------
S=$WORK/i22_gpu
if [[ -d $S ]]; then
  # sweep.py rewrites its report after every run: a stopped sweep's holds the runs it finished
  (cd "$S" && tar czf - --ignore-failed-read results.* evals logs 2>/dev/null) > "$OUT/i22_gpu.tgz" || true
  [[ -f $S/results.md ]] && cp "$S/results.md" "$OUT/results.md"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/gpu.csv" 2>/dev/null || true
say "done (sweep exit $rc): $(ls "$OUT" | tr '\n' ' ')"
exit 0
