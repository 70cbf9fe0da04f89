"""The TensorBoard dashboard over exactly the runs asked for, with one HParams table across them.

``bnexp tensorboard`` builds a private logdir of symlinks to the selected runs (a running sweep's
new jobs are linked as they appear), writes one HParams *experiment* into its root, starts
TensorBoard on it and stops it on Ctrl-C.

Why one experiment: each run logs its hparams and final metrics as an HParams *session*, but the
table's columns come from an *experiment* summary, and TensorBoard uses the first one it meets,
in no fixed order, when a logdir holds several. So runs write none; a sweep writes one into its
own directory (for ``tensorboard --logdir <sweep dir>``) and the dashboard one for its selection:
the keys that vary first, marked ``differs`` (TensorBoard shows five columns, those first), then
a few core keys; the ``final/*`` scalars as metrics.

What it opens on: the URL it prints opens TIME SERIES with the loss and accuracy cards pinned
above everything else and smoothing 0 (TensorBoard reads both from the URL: ``pinnedCards``,
``smoothing``; there is no server-side default). Runs are named so that the HParams table's
narrow Trial ID column is readable: a sweep's job by its number and choices (``3-mlp-custom``,
``3-mlp-custom (sweep-1df4)`` beside other sweeps), a run by its id without the date and time
(``mlp-custom-1a2b``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from bnexp.core.errors import BnexpError
from bnexp.tracking.hparams import is_integer, write_experiment

DEFAULT_PORT = 6006

# The cards the dashboard opens on, pinned first, and its smoothing: per-epoch curves have a handful
# of points, which TensorBoard's default smoothing (0.6, an exponential moving average) drags behind.
PINNED_TAGS = ("val/acc", "val/loss", "train/loss", "train/acc")
SMOOTHING = 0.0

TIMESTAMP = re.compile(r"^\d{8}-\d{6}-")  # how run and sweep ids begin (bnexp.store.run.run_stem)


def short_id(run_id: str) -> str:
    """A run or sweep id without its leading date and time: ``mlp-custom-1a2b``."""
    return TIMESTAMP.sub("", run_id) or run_id


# ---------------------------------------------------------------------------------------------
# The logdir


class Logdir:
    """A private logdir of symlinks to the runs that ``refs`` name (all runs under ``root`` when
    empty): ``<run id>`` for a run, ``<sweep id>/<job>`` for a sweep's job, ``<job>`` being its id
    without the sweep's. References are checked at once (one walk for all of them); :meth:`refresh`
    links runs that appeared since (the new jobs of a running sweep, new runs when showing everything)."""

    def __init__(self, path: Path, refs: list[str], root: Path):
        from bnexp.store.catalog import resolve_all

        self.path, self.root = path, root
        self.selected = [(kind, p.resolve()) for kind, p in resolve_all(refs, root)]
        self.one_sweep = [kind for kind, _ in self.selected] == ["sweep"]  # its jobs need no sweep prefix
        self.linked: set[str] = set()  # real paths of the runs linked so far
        self.skipped: list[str] = []  # why a run's config could not go into the HParams table

    def _runs(self) -> list[tuple[str, Optional[str]]]:
        """``(real path, sweep id or None)`` of every selected run. The output directory is walked
        through its index, and its real path found once: below it the walk follows no links."""
        from bnexp.store.catalog import iter_run_entries, sweep_of
        from bnexp.store.index import Index

        if not self.selected:
            base, real = str(self.root), os.path.realpath(self.root)
            with Index(self.root) as index:
                return [(real + entry.path[len(base):], entry.sweep) for entry in iter_run_entries(self.root, index)]
        runs = []
        for kind, path in self.selected:  # already real paths
            if kind == "sweep":
                runs += [(entry.path, entry.sweep) for entry in iter_run_entries(path)]
            else:
                runs.append((str(path), sweep_of(path)))
        return runs

    def _link_names(self, run_dir: str, sweep: Optional[str]) -> tuple[str, str]:
        """The readable name of a run's link (its TensorBoard run name), and the full one used when
        the readable one is taken. A sweep's job: ``<job>`` when one sweep is shown, else ``<job>
        (<sweep>)`` (what tells the rows apart first: the Trial ID column shows ~14 characters), in
        full ``<sweep id>/<job>``; a run: its id without, in full with, the date and time."""
        name = os.path.basename(run_dir)
        if sweep is not None:
            job = name[len(sweep) + 1:] if name.startswith(sweep + "-") else name
            readable = job if self.one_sweep else f"{job} ({short_id(sweep)})"
            return os.path.join(self.path, readable), os.path.join(self.path, sweep, job)
        return os.path.join(self.path, short_id(name)), os.path.join(self.path, name)

    def _link(self, run_dir: str, sweep: Optional[str]) -> bool:
        """Link ``run_dir`` under the first of its names that is free or already its own (plain os
        calls: one ``symlink`` per new run); False when both are taken by other runs."""
        top = str(self.path)
        for link in self._link_names(run_dir, sweep):
            parent = os.path.dirname(link)
            if parent != top:
                os.makedirs(parent, exist_ok=True)
            try:
                os.symlink(run_dir, link, target_is_directory=True)
                return True
            except FileExistsError:
                if os.path.islink(link) and os.path.realpath(link) == run_dir:
                    return True
        return False

    def refresh(self, progress: Optional[Callable[[int], None]] = None) -> int:
        """Link every selected run not linked yet; returns how many are linked. ``progress(n)`` is
        told the count every 500 runs (a first refresh over thousands of runs takes a moment)."""
        for run_dir, sweep in self._runs():
            if run_dir in self.linked:
                continue
            if not self._link(run_dir, sweep):  # both names taken by other runs: cannot happen with ids made by bnexp
                continue
            self.linked.add(run_dir)
            if progress and len(self.linked) % 500 == 0:
                progress(len(self.linked))
        return len(self.linked)

    def write_experiment(self) -> None:
        """The selection's table: the config keys that differ between the linked runs lead. A run
        whose config cannot be read is left out of the table (and named in :attr:`skipped`). The
        configs come through the output directory's index: each is parsed once per version."""
        from bnexp.core.vocab import is_plumbing
        from bnexp.store.files import UnreadableFile
        from bnexp.store.listing import run_configs
        from bnexp.store.registry import differing_keys

        configs = []
        for run_dir, config in zip(sorted(self.linked), run_configs(sorted(self.linked), self.root)):
            if isinstance(config, UnreadableFile):
                if os.path.exists(os.path.join(run_dir, "config.yaml")):
                    self.skipped.append(str(config))
            else:
                configs.append(config)
        if configs:
            params = {k: v for c in configs for k, v in c.items() if not is_plumbing(k)}
            params["status"] = "completed"
            integers = {k: [c[k] for c in configs if k in c] for k in params}
            integers = {k: v for k, v in integers.items() if v and all(map(is_integer, v))}
            write_experiment(self.path, params, differing_keys(configs), integers)


# ---------------------------------------------------------------------------------------------
# The server


def _bindable(host: str, port: int) -> bool:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TensorBoard's server does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(host: str, port: Optional[int], after: Optional[int] = None) -> tuple[int, Optional[str]]:
    """The port to serve on and, when it is not the one expected, a note saying why. An explicit
    ``--port`` that is taken is an error; the default moves to the next free port (past ``after``,
    a port found free that another process took before TensorBoard could bind it)."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise BnexpError(f"--host {host}: not a known host name or address") from None
    if port is not None:
        if not 1 <= port <= 65535:
            raise BnexpError(f"--port {port}: must be in 1-65535")
        if not _bindable(host, port):
            raise port_taken(host, port)
        return port, None
    for candidate in range(DEFAULT_PORT if after is None else after + 1, DEFAULT_PORT + 100):
        if _bindable(host, candidate):
            note = None if candidate == DEFAULT_PORT else f"port {DEFAULT_PORT} is in use; using {candidate}"
            return candidate, note
    raise BnexpError(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + 99} on {host} are all in use; pick one with --port")


def port_taken(host: str, port: int) -> BnexpError:
    return BnexpError(f"port {port} on {host} is in use (or not allowed); pick another with --port, "
                      "or leave --port out to take the next free one")


class PortTaken(BnexpError):
    """TensorBoard could not bind the port: another process took it after it was found free."""


def start_tensorboard(logdir: Path, host: str, port: int, log: Path, move_on: bool) -> "TensorBoard":
    """TensorBoard serving ``logdir`` on ``port``, bound (its URL is then its own, not another
    server's). A port taken between choosing and binding it (two dashboards started at once both
    found the default free) is an error for ``--port``; with ``move_on`` the next free port is tried."""
    while True:
        board = TensorBoard(logdir, host, port, log)
        try:
            board.wait_bound()
            return board
        except PortTaken:
            if not move_on:
                raise port_taken(host, port) from None
            port, _ = choose_port(host, None, after=port)
        except BaseException:
            board.stop()
            raise


def url_for(host: str, port: int) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/"


def opening_url(base: str) -> str:
    """``base`` opening TIME SERIES on :data:`PINNED_TAGS`, pinned first, at :data:`SMOOTHING`."""
    pinned = json.dumps([{"plugin": "scalars", "tag": tag} for tag in PINNED_TAGS], separators=(",", ":"))
    query = urllib.parse.urlencode({"pinnedCards": pinned, "smoothing": f"{SMOOTHING:g}"}, safe="/:,")
    return f"{base}?{query}#timeseries"


TEMP_PREFIX = "bnexp-tensorboard-"


def _die_with(parent: int) -> Callable[[], None]:
    """``preexec_fn`` for a child that must not outlive ``parent``: Linux sends it SIGTERM when the
    parent dies, even by kill -9 (PR_SET_PDEATHSIG); a parent already gone by then ends it at once."""
    def preexec() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: the parent's own stop() remains
            return
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def private_dir() -> tempfile.TemporaryDirectory:
    """A temporary directory for one dashboard, named after this process; those of earlier
    dashboards whose process is gone (killed with -9) are removed first."""
    from bnexp.store.lock import pid_alive

    for stale in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = stale.name[len(TEMP_PREFIX):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)  # links inside are unlinked, never followed
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


class TensorBoard:
    """A TensorBoard subprocess over ``logdir``, its output in ``log`` (shown if it fails to start).
    It dies with this process, however this process ends."""

    def __init__(self, logdir: Path, host: str, port: int, log: Path):
        self.url, self.log, self.port = url_for(host, port), log, port
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
                   "--port", str(port), "--reload_interval", "5"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                                            preexec_fn=_die_with(os.getpid()), start_new_session=True)

    def wait_bound(self, timeout: float = 120.0) -> None:
        """Until TensorBoard says it serves (it prints that once its socket is bound): only then is
        an answer on the port its own. :class:`PortTaken` if it could not bind the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            said = self.log.read_text(errors="replace")
            if " at http" in said:
                return
            if self.process.poll() is not None:
                if "already in use" in said:
                    raise PortTaken(f"port {self.port} was taken")
                tail = said.strip().splitlines()[-3:]
                raise BnexpError(f"TensorBoard exited with code {self.process.returncode}: {' | '.join(tail)}")
            time.sleep(0.1)
        self.stop()
        raise BnexpError(f"TensorBoard did not start within {timeout:.0f} s (its log: {self.log})")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll until it answers over HTTP; its own error (port taken, bad flag) if it exits first."""
        deadline = time.monotonic() + timeout
        probe = self.url.replace("localhost", "127.0.0.1") + "data/plugins_listing"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise BnexpError(f"TensorBoard exited with code {self.process.returncode}: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(probe, timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise BnexpError(f"TensorBoard did not answer on {self.url} within {timeout:.0f} s (its log: {self.log})")


    def stop(self) -> None:
        """Stop its whole process group (TensorBoard may start a data-server child)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
