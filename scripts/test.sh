#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite, in parallel over
# BNEXP_TEST_WORKERS processes (default 2: the cores of the machines this is run on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML report is tested in a real headless Chromium (tests/test_html_report.py): install Debian's
# chromium and its driver where we may (root, apt); elsewhere those tests skip and say why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
        || echo "warning: could not install chromium; the browser tests will skip" >&2
fi
# The Slurm and PostgreSQL tests start real servers (tests/clusters.py); as root (CI), install them so
# those tests run instead of skipping. Elsewhere: apt-get install -y slurm-wlm munge postgresql.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null ||
            echo "note: could not install ${missing[*]}; the Slurm/PostgreSQL tests will skip" >&2
    fi
fi
exec .venv/bin/python -m pytest -q -n "${BNEXP_TEST_WORKERS:-2}" "$@"
