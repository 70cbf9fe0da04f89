#!/usr/bin/env bash
# Create .venv (Python 3.11) and install bnexp with its extras (default: test, mlflow and postgres, so
# the suite runs the MLflow logger and PostgreSQL tests), pinned by constraints.txt.
# Safe to re-run: an up-to-date environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.bnexp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${BNEXP_EXTRAS:-test,mlflow,postgres}]"
    touch "$stamp"
fi
