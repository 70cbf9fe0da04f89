"""What `bnexp tensorboard` opens on, checked on a real sweep served by a real TensorBoard: over its
HTTP data API and in headless Chromium (Debian's chromium + chromedriver driven by Selenium, as in
tests/test_html_report.py). Loss and accuracy cards first, unsmoothed; no per-channel cards unless
asked for; HParams trial ids readable and integer hyperparameters shown as integers."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
from conftest import fake_run
from test_dashboard import free_port, get, poll
from test_html_report import _browser

from bnexp.views.dashboard import PINNED_TAGS, Logdir, opening_url

SWEEP = ["norm=none,custom", "batch_size=32", "epochs=2", "dataset.limit_train=256", "dataset.limit_val=128",
         "threads=1", "log_every_steps=2", "hist_every_steps=4"]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A real 2-job sweep and `bnexp tensorboard SWEEP` over it: (base URL, the printed opening URL)."""
    home = tmp_path_factory.mktemp("board")
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(home / "outputs"), "COLUMNS": "80"}
    env.pop("BNEXP_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "bnexp", "sweep", *SWEEP], cwd=home, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (sweep,) = (home / "outputs" / "sweeps").iterdir()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bnexp", "tensorboard", sweep.name, "--port", str(port)],
                              cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    try:
        printed = []
        while not any("unsmoothed: " in line for line in printed):
            printed.append(lines.get(timeout=120))
        opening = printed[-1].split("unsmoothed: ", 1)[1].strip()
        yield f"http://127.0.0.1:{port}/", opening, printed
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def test_printed_link_opens_on_loss_and_accuracy(board):
    base, opening, printed = board
    assert opening == opening_url(base)
    assert printed[0].startswith("TensorBoard on 2 runs: ") and base in printed[0]
    assert "#timeseries" in opening and "smoothing=0" in opening
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(opening).query)
    assert [card["tag"] for card in json.loads(query["pinnedCards"][0])] == list(PINNED_TAGS)


def test_data_api_no_channel_cards_readable_runs_integer_hparams(board):
    base = board[0]
    tags = poll(lambda: get(f"{base}data/plugin/scalars/tags"), lambda t: len(t) >= 2)
    assert sorted(tags) == ["0-mlp-none", "1-mlp-custom"]  # one sweep shown: its job names alone
    for run_tags in tags.values():
        assert set(PINNED_TAGS) <= set(run_tags)
        assert not [t for t in run_tags if "_channels/" in t], "per-channel scalars are opt-in (log_channels)"
    experiment = get(f"{base}data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {h["name"]: h for h in experiment["hparamInfos"]}
    assert infos["batch_size"]["type"] == "DATA_TYPE_STRING" and infos["batch_size"]["domainDiscrete"] == ["32"]
    assert infos["optimizer.lr"]["type"] == "DATA_TYPE_FLOAT64"
    groups = poll(lambda: get(f"{base}data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100,
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": k, "includeInResult": True} for k in ("batch_size", "epochs", "optimizer.lr")]}),
        lambda g: len(g.get("sessionGroups", [])) == 2)["sessionGroups"]
    assert sorted(g["name"] for g in groups) == ["0-mlp-none", "1-mlp-custom"]
    for group in groups:
        assert (group["hparams"]["batch_size"], group["hparams"]["epochs"]) == ("32", "2")
        assert group["hparams"]["optimizer.lr"] == 0.1
    layout = get(f"{base}data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
    assert r"^val/loss$" in charts["loss"] and r"^val/acc$" in charts["accuracy"]


def _chromium():
    """The HTML report's headless Chromium (skips, saying why, without one), network back on: the
    dashboard is served from 127.0.0.1."""
    driver = _browser()
    driver.delete_network_conditions()
    return driver


# every text under an element, shadow roots included (the HParams table is Polymer, in shadow DOM)
DEEP_TEXT = """
const out = [];
const walk = node => {
  if (node.nodeType === Node.TEXT_NODE) { const t = node.textContent.trim(); if (t) out.push(t); return; }
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const child of node.childNodes) walk(child);
};
walk(document.body);
return out;
"""


def _wait(driver, script, ready, timeout=90.0):
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if ready(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"page not ready after {timeout} s: {value}")


@pytest.mark.slow
def test_dashboard_in_chromium(board):
    base, opening, _ = board
    driver = _chromium()
    try:
        driver.get(opening)
        cards = _wait(driver, "return Array.from(document.querySelectorAll('card-view tb-truncated-path'))"
                              ".map(e => e.getAttribute('title'))", lambda t: len(t) >= len(PINNED_TAGS) + 2)
        assert cards[:len(PINNED_TAGS)] == list(PINNED_TAGS), cards[:8]  # the first cards: loss and accuracy
        groups = driver.execute_script("return Array.from(document.querySelectorAll('.group-title'))"
                                       ".map(e => e.innerText.trim())")
        assert groups[0] == "Pinned" and {"train", "val"} <= set(groups)
        assert not [g for g in groups if g.endswith("_channels")], groups  # no per-channel cards by default
        assert "smoothing=0" in driver.current_url  # TensorBoard took the setting (it writes its state back)

        driver.get(base + "#hparams")
        text = _wait(driver, DEEP_TEXT, lambda t: "1-mlp-custom" in t)
        assert "0-mlp-none" in text and not [t for t in text if re.match(r"\d{8}-\d{4}", t)]  # readable trial ids
        assert "32" in text and "32.000" not in text and "2.0000" not in text  # integers shown as integers
    finally:
        driver.quit()


def test_link_names_are_readable_and_unique(tmp_path):
    """A sweep's job is named by its job alone when one sweep is shown, else with its sweep's short
    id; a run by its id without the date; a name already taken falls back to the full id."""
    root = tmp_path / "outputs"
    fake_run(root, "20261120-100000-mlp-custom-aaaa")
    fake_run(root, "20261121-090000-mlp-custom-aaaa")  # same id but for the date: a clash
    sweep = root / "sweeps" / "20261120-110000-sweep-bbbb"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "status": "completed"}))
    for job in ("0-mlp-none", "1-mlp-custom"):
        fake_run(root, f"{sweep.name}-{job}", parent=f"sweeps/{sweep.name}")

    every = Logdir(tmp_path / "every", [], root)
    every.path.mkdir()
    assert every.refresh() == 4
    names = sorted(str(p.relative_to(every.path)) for p in every.path.rglob("*") if p.is_symlink())
    assert names == ["0-mlp-none (sweep-bbbb)", "1-mlp-custom (sweep-bbbb)", "20261121-090000-mlp-custom-aaaa",
                     "mlp-custom-aaaa"]
    assert (every.path / "mlp-custom-aaaa").resolve() == (root / "runs" / "20261120-100000-mlp-custom-aaaa")
    assert every.refresh() == 4  # a second refresh links nothing twice

    one = Logdir(tmp_path / "one", [str(sweep)], root)
    one.path.mkdir()
    one.refresh()
    assert sorted(p.name for p in one.path.iterdir()) == ["0-mlp-none", "1-mlp-custom"]
