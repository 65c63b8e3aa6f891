#!/usr/bin/env bash
# README command 2 (and .ci/run): set up this machine, tests' system packages included, then run
# the lint check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
