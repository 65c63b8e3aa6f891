#!/usr/bin/env bash
# README command 1: set up this machine (no root needed) and run the local demo cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/celltap demo "$@"
