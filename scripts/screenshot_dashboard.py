"""Screenshot the TensorBoard dashboard of a real sweep with headless Chromium (the README figure).

Runs a small sweep (no BN vs bnexp's BN x two learning rates, on the bundled digits data) into a
temporary output directory, starts ``bnexp tensorboard`` on it, waits until its scalars are served,
and saves the page the link it prints opens (TIME SERIES, loss and accuracy pinned first, no
smoothing) and the HParams table:

    python scripts/screenshot_dashboard.py            # -> scripts/figures/dashboard.png, dashboard_hparams.png

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and Selenium
(pinned in constraints.txt): the page is driven, not just loaded, so the shot waits until every
pinned chart has drawn its lines and closes the settings pane first.
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
HPARAMS_VIEW = "#hparams"


def find_chromium(given: str | None) -> str:
    for candidate in (given, "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    sys.exit("Chromium not found: apt-get install chromium, or pass --chromium PATH")


def browser(chromium: str, size: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver") or sys.exit("chromedriver not found: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--window-size={size}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


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


# the pinned cards' line charts have drawn (each draws one <path> per run into its SVG/canvas layer)
CHARTS_DRAWN = """return Array.from(document.querySelectorAll('card-view')).slice(0, 4)
  .filter(c => c.querySelectorAll('line-chart canvas, line-chart svg path.line').length > 0).length"""


def screenshot(chromium: str, url: str, png: Path, size: str, settle_s: float, time_series: bool) -> None:
    driver = browser(chromium, size)
    try:
        driver.get(url)
        deadline = time.monotonic() + 120
        if time_series:
            while driver.execute_script(CHARTS_DRAWN) < 4 and time.monotonic() < deadline:
                time.sleep(0.5)
            close = driver.find_elements("css selector", "button[aria-label='Close side pane']")
            if close:
                close[0].click()
        time.sleep(settle_s)  # the charts' last data requests and transitions
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    print(f"saved {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=FIGURES / "dashboard.png")
    parser.add_argument("--hparams-out", type=Path, default=FIGURES / "dashboard_hparams.png")
    parser.add_argument("--chromium", help="path of the Chromium binary")
    parser.add_argument("--size", default="1600,1000", help="window size WIDTH,HEIGHT of the scalars page")
    parser.add_argument("--hparams-size", default="2400,520", help="wide enough for the metric columns")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds the page gets before the shot")
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
                                  env={**env, "COLUMNS": "400"}, stdout=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            opening = next(line for line in server.stdout if "unsmoothed: " in line).split("unsmoothed: ")[1].strip()
            print(f"dashboard: {opening}")
            wait_for_scalars(base, jobs)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(chromium, opening, args.out, args.size, args.settle, time_series=True)
            screenshot(chromium, f"{base}/{HPARAMS_VIEW}", args.hparams_out, args.hparams_size, args.settle,
                       time_series=False)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
