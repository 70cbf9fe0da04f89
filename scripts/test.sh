#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite, in parallel over
# BNEXP_TEST_WORKERS processes (default 2: the cores of the machines this is run on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n "${BNEXP_TEST_WORKERS:-2}" "$@"
