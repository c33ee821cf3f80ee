#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it.
# torch is installed first and pinned, so pip never swaps in a multi-GB CUDA build on a
# CPU machine. On a GPU machine set TORCH_SPEC to the CUDA build you want, e.g. PyPI's
# (CUDA 13.0 on Linux x86_64; where a local CPU wheel shadows it, name the index):
#   TORCH_SPEC="torch==2.13.0 --index-url https://pypi.org/simple" bash tools/setup_env.sh
# or, for a CUDA 12.8 driver:
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
python -c "import titan_jepa, transformers" || { echo "the project did not install" >&2; exit 1; }
