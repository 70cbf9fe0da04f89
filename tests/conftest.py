"""Shared test helpers: running the real CLI, and the real-data location."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST_T10K = REPO.parent / "shared/data/mnist-t10k"

# Small, fast settings for end-to-end runs on the bundled digits data.
TINY = ["epochs=1", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=32", "log_every_steps=2"]


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An MNIST-format file: 0x0000, type 0x08 (uint8), dimension count, big-endian sizes, data."""
    array = np.asarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def requires_mnist_t10k():
    if not SHARED_MNIST_T10K.is_dir():
        pytest.skip(f"real MNIST test set not present at {SHARED_MNIST_T10K} (needs ../shared/data)")
    return SHARED_MNIST_T10K


@pytest.fixture
def bnexp(tmp_path):
    """Run ``python -m bnexp ARGS`` in a subprocess with runs written under tmp_path/outputs."""
    out = tmp_path / "outputs"

    def run(*args: str, check: bool = True, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
        env.pop("BNEXP_DEBUG", None)
        result = subprocess.run([sys.executable, "-m", "bnexp", *args], capture_output=True, text=True,
                                cwd=cwd or tmp_path, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"bnexp {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    run.out = out
    return run
