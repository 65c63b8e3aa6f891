#!/usr/bin/env bash
# README command 2 (and .ci/run): set up this machine, tests' system packages included, then run
# the lint check, the whole test suite, and the container image tests (marker `image`: they build
# docker/Dockerfile with buildah and run it with podman, a few minutes, so the default run leaves
# them out).  The main run uses two pytest-xdist workers, each test module whole on one of them
# (tests/conftest.py: pytest_xdist_make_scheduler).  Arguments go to the main pytest run only.
# The main run lists its 30 slowest tests, so every CI log shows where the suite's 20-minute
# budget goes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=30 "$@"
exec .venv/bin/python -m pytest -q -p no:cacheprovider -m image tests/deploy/test_image.py
