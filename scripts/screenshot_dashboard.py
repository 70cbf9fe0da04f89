"""Screenshot the TensorBoard dashboard of a real sweep with headless Chromium (the README figure).

Runs a small sweep (no BN vs bnexp's BN x two learning rates, on the bundled digits data) into a
temporary output directory, starts ``bnexp tensorboard`` on it, waits until its scalars are served,
and saves the Scalars page and the HParams table:

    python scripts/screenshot_dashboard.py            # -> scripts/figures/dashboard.png, dashboard_hparams.png

Needs Chromium (Debian: ``apt-get install chromium``) or ``--chromium PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures"
SWEEP = ["norm=none,custom", "optimizer.lr=0.1,1.0", "model=mlp", "model.hidden_sizes=[128,64]",
         "hist_every_steps=20", "log_every_steps=5"]
# Scalars page: the validation accuracy and training loss of every job, unsmoothed.
SCALARS_VIEW = "#scalars&_smoothingWeight=0&tagFilter=val%2Facc%7Ctrain%2Floss"
HPARAMS_VIEW = "#hparams"


def find_chromium(given: str | None) -> str:
    for candidate in (given, "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    sys.exit("Chromium not found: apt-get install chromium, or pass --chromium PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_scalars(base: str, runs: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=5) as response:
                if len(json.loads(response.read())) >= runs:
                    return
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"TensorBoard at {base} did not serve {runs} runs within {timeout} s")


def screenshot(chromium: str, url: str, png: Path, size: str, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bnexp-chromium-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", f"--screenshot={png}",
                        f"--virtual-time-budget={budget_ms}", url],
                       check=True, capture_output=True, timeout=300)
    print(f"saved {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=FIGURES / "dashboard.png")
    parser.add_argument("--hparams-out", type=Path, default=FIGURES / "dashboard_hparams.png")
    parser.add_argument("--chromium", help="path of the Chromium binary")
    parser.add_argument("--size", default="1400,900", help="window size WIDTH,HEIGHT of the scalars page")
    parser.add_argument("--hparams-size", default="2400,520", help="wide enough for the metric columns")
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time Chromium gives the page")
    args = parser.parse_args()
    chromium = find_chromium(args.chromium)

    with tempfile.TemporaryDirectory(prefix="bnexp-screenshot-") as tmp:
        env = {**os.environ, "BNEXP_OUTPUT_DIR": tmp}
        subprocess.run([sys.executable, "-m", "bnexp", "sweep", *SWEEP, f"epochs={args.epochs}", "-j", "2",
                        "--name", "dashboard"], env=env, check=True)
        (sweep_dir,) = (Path(tmp) / "sweeps").iterdir()
        jobs = len(list(sweep_dir.glob("*/run.json")))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bnexp", "tensorboard", sweep_dir.name, "--port", str(port)],
                                  env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_scalars(base, jobs)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(chromium, f"{base}/{SCALARS_VIEW}", args.out, args.size, args.budget_ms)
            screenshot(chromium, f"{base}/{HPARAMS_VIEW}", args.hparams_out, args.hparams_size, args.budget_ms)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
