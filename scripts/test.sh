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
exec .venv/bin/python -m pytest -q -n "${BNEXP_TEST_WORKERS:-2}" "$@"
