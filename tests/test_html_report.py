"""`bnexp report --html`: one self-contained page, checked as text and in a real headless Chromium
(Debian's chromium + chromedriver, driven by Selenium): it loads with the network off and no console
errors, its parallel-coordinates axes are the sweep's parameters, and brushing an axis filters lines.
scripts/test.sh installs chromium where it runs as root; elsewhere the browser tests skip, saying why."""

from __future__ import annotations

import json
import re
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def html_sweep(tmp_path_factory):
    """A real grid sweep (norm x lr x seed, 12 tiny jobs on digits) and its HTML report."""
    import os
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("html")
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(home / "outputs"), "COLUMNS": "120"}
    env.pop("BNEXP_DEBUG", None)

    def bnexp(*args):
        done = subprocess.run([sys.executable, "-m", "bnexp", *args], cwd=home, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    bnexp("sweep", "norm=none,custom,builtin", "optimizer.lr=0.1,0.5", "seed=0,1", "epochs=2",
          "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=32", "threads=1", "log_every_steps=4")
    sweep = next((home / "outputs" / "sweeps").iterdir())
    bnexp("report", str(sweep), "--html")
    return sweep, sweep / "report" / "report.html"


@pytest.mark.slow
def test_html_report_is_one_self_contained_file(html_sweep):
    sweep, page = html_sweep
    text = page.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text  # no request may leave the page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)       # nothing loaded from elsewhere
    assert "<script src" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert text.count("data:image/png;base64,") >= 4                           # the BN figures, inlined
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)
                      .group(1).replace("<\\/", "</"))
    assert data["params"] == ["norm.kind", "optimizer.lr", "seed"] and len(data["runs"]) == 12
    assert all(len(c["curves"]["val_acc"]["x"]) == 2 for c in data["cells"])  # 2 epochs each, seed bands
    assert "Final metrics per configuration" in text and "Welch" in text


def _browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    "scripts/test.sh installs them when run as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (a test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1300,2200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    return driver


def _visible_runs(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#pc-svg path.pc-line'))"
        ".filter(p => !p.classList.contains('dim')).map(p => p.getAttribute('data-run'))")


@pytest.mark.slow
def test_html_report_in_a_real_browser_offline_axes_and_brushing(html_sweep):
    from selenium.webdriver.common.action_chains import ActionChains

    sweep, page = html_sweep
    swept = json.loads((sweep / "sweep.json").read_text())["swept"]
    driver = _browser()
    try:
        driver.get(page.as_uri())
        assert driver.execute_script("return window.bnexpReport && window.bnexpReport.ready") is True
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == [], errors
        axes = [a.text for a in driver.find_elements("css selector", "#pc-svg .axis-title")]
        # the sweep's parameters (the norm group is its config key norm.kind), then the final metrics
        assert swept == ["norm", "optimizer.lr", "seed"]
        assert axes == ["norm.kind", "optimizer.lr", "seed", "best_val_acc", "val_acc", "val_loss"]
        assert len(_visible_runs(driver)) == 12
        assert len(driver.find_elements("css selector", "#curves svg.curve-panel")) == 3
        lr_axis = driver.find_element("css selector", '#pc-svg rect.brush-area[data-axis="optimizer.lr"]')
        height = lr_axis.rect["height"]
        # drag over the upper third of the lr axis: only lr=0.5 (the top of the axis) stays
        ActionChains(driver).move_to_element_with_offset(lr_axis, 0, -height / 2 + 1).click_and_hold() \
            .move_by_offset(0, height / 3).release().perform()
        kept = _visible_runs(driver)
        runs = {r["id"]: r for r in driver.execute_script("return window.bnexpReport.data.runs")}
        assert len(kept) == 6 and all(runs[i]["params"]["optimizer.lr"] == 0.5 for i in kept)
        assert driver.find_element("css selector", "#pc-count").text == "6 of 12 runs selected"
        ActionChains(driver).double_click(lr_axis).perform()  # clears the brush
        assert len(_visible_runs(driver)) == 12
        legend = driver.find_element("css selector", '#legend span[data-cell="0"]')
        legend.click()  # hides configuration 0 in every curve panel
        hidden = driver.find_elements("css selector", '#curves .cell.hidden[data-cell="0"]')
        assert len(hidden) == 3
        legend.click()
        assert driver.get_log("browser") == []
    finally:
        driver.quit()
