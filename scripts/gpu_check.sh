#!/usr/bin/env bash
# The GPU check a maintainer runs in one command on a machine with a GPU (it also runs on CPU,
# skipping the CUDA items and saying so). What it runs: scripts/gpu_check.py.
#   bash scripts/gpu_check.sh [--no-tests] [--logs DIR]
# It uses .venv/bin/python when there is one (bash scripts/setup.sh), else $PYTHON or python3,
# which must have dmrnet and its test tools installed (pip install -e ".[dev]").
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import dmrnet" 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import dmrnet; run 'bash scripts/setup.sh' or 'pip install -e \".[dev]\"' first" >&2
  exit 2
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
