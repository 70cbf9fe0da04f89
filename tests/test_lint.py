"""ruff (pyflakes, pycodestyle, import order; configured in pyproject.toml) finds nothing: run by
the suite so that the test command (and every merge) checks it. `ruff check --fix` sorts imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "bnexp", "tests", "scripts"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
