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
"""

from __future__ import annotations

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
from typing import Any, Callable, Iterable, Optional

from bnexp.errors import BnexpError

# Always worth a column; after the keys that vary.
CORE_HPARAMS = ("model.name", "norm.kind", "optimizer.name", "optimizer.lr", "batch_size", "dataset.name",
                "epochs", "seed", "status")
FINAL_METRICS = ("final/val_acc", "final/best_val_acc", "final/val_loss", "final/train_loss", "final/train_acc")
GROUP_KEYS = ("name", "kind", "type")  # what identifies a group's choice: model.name, norm.kind, device.type
DEFAULT_PORT = 6006
EXPERIMENT_RUN = "sweep"  # the folder holding the HParams experiment: its name in TensorBoard's run list


def _hparam_type(value: Any) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def experiment_summary(params: dict[str, Any], leading: Iterable[str], metric_tags: Iterable[str] = FINAL_METRICS):
    """The HParams experiment (the table's columns): ``leading`` keys marked ``differs``, then the
    core keys, each typed from its value in ``params``; ``metric_tags`` as the metrics."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    leading = [k for k in dict.fromkeys(leading) if k in params]
    names = leading + [k for k in CORE_HPARAMS if k in params and k not in leading]
    experiment = api_pb2.Experiment(
        time_created_secs=time.time(),
        hparam_infos=[api_pb2.HParamInfo(name=k, type=_hparam_type(params[k]), differs=k in leading) for k in names],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
    )
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.EXPERIMENT_TAG, tensor=metadata.NULL_TENSOR,
                      metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment)))
    return summary


def write_experiment(directory: Path, params: dict[str, Any], leading: Iterable[str]) -> None:
    """Write the experiment into ``directory/sweep``: TensorBoard lists it as a run named ``sweep``
    (in the directory itself it would be a stray run named ``.``)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    (Path(directory) / EXPERIMENT_RUN).mkdir(exist_ok=True)
    writer = EventFileWriter(str(Path(directory) / EXPERIMENT_RUN))
    writer.add_event(event_pb2.Event(wall_time=time.time(), summary=experiment_summary(params, leading)))
    writer.close()


def param_key(key: str, params: dict[str, Any]) -> Optional[str]:
    """The hparam an override key stands for: itself, or a group's identifying key (norm -> norm.kind)."""
    if key in params:
        return key
    return next((f"{key}.{k}" for k in GROUP_KEYS if f"{key}.{k}" in params), None)


def write_sweep_experiment(sweep_dir: Path, params: dict[str, Any], swept: Iterable[str]) -> None:
    """A sweep's table: its swept keys (``norm`` stands for ``norm.kind``) lead."""
    leading = [k for k in (param_key(key, params) for key in swept) if k is not None]
    write_experiment(sweep_dir, {**params, "status": "completed"}, leading)


# ---------------------------------------------------------------------------------------------
# The logdir


class Logdir:
    """A private logdir of symlinks to the runs that ``refs`` name (all runs under ``root`` when
    empty): ``<run id>`` for a run, ``<sweep id>/<job>`` for a sweep's job, ``<job>`` being its id
    without the sweep's. References are checked at once (one walk for all of them); :meth:`refresh`
    links runs that appeared since (the new jobs of a running sweep, new runs when showing everything)."""

    def __init__(self, path: Path, refs: list[str], root: Path):
        from bnexp.runs import resolve_all

        self.path, self.root = path, root
        self.selected = [(kind, p.resolve()) for kind, p in resolve_all(refs, root)]
        self.linked: set[Path] = set()
        self.skipped: list[str] = []  # why a run's config could not go into the HParams table

    def _runs(self) -> Iterable[Path]:
        from bnexp.runs import iter_run_dirs

        if not self.selected:
            return (p.resolve() for p in iter_run_dirs(self.root))
        return (run.resolve() for kind, p in self.selected for run in (iter_run_dirs(p) if kind == "sweep" else [p]))

    def _link_name(self, run_dir: Path) -> Path:
        from bnexp.runs import SWEEP_FILE

        sweep = run_dir.parent
        if (sweep / SWEEP_FILE).is_file():
            job = run_dir.name[len(sweep.name) + 1:] if run_dir.name.startswith(sweep.name + "-") else run_dir.name
            return self.path / sweep.name / job
        return self.path / run_dir.name

    def refresh(self, progress: Optional[Callable[[int], None]] = None) -> int:
        """Link every selected run not linked yet; returns how many are linked. ``progress(n)`` is
        told the count every 500 runs (a first refresh over thousands of runs takes a moment)."""
        for run_dir in self._runs():
            if run_dir not in self.linked:
                link = self._link_name(run_dir)
                link.parent.mkdir(exist_ok=True)
                if not link.exists():
                    link.symlink_to(run_dir, target_is_directory=True)
                self.linked.add(run_dir)
                if progress and len(self.linked) % 500 == 0:
                    progress(len(self.linked))
        return len(self.linked)

    def write_experiment(self) -> None:
        """The selection's table: the config keys that differ between the linked runs lead. A run
        whose config cannot be read is left out of the table (and named in :attr:`skipped`)."""
        from bnexp.registry import differing_keys, run_config
        from bnexp.runs import UnreadableFile
        from bnexp.vocab import is_plumbing

        configs = []
        for run_dir in sorted(self.linked):
            try:
                configs.append(run_config(run_dir))
            except UnreadableFile as exc:
                if (run_dir / "config.yaml").exists():
                    self.skipped.append(str(exc))
        if configs:
            params = {k: v for c in configs for k, v in c.items() if not is_plumbing(k)}
            params["status"] = "completed"
            write_experiment(self.path, params, differing_keys(configs))


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


def choose_port(host: str, port: Optional[int]) -> tuple[int, Optional[str]]:
    """The port to serve on and, when it is not the one expected, a note saying why. An explicit
    ``--port`` that is taken is an error; the default moves to the next free port."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise BnexpError(f"--host {host}: not a known host name or address") from None
    if port is not None:
        if not 1 <= port <= 65535:
            raise BnexpError(f"--port {port}: must be in 1-65535")
        if not _bindable(host, port):
            raise BnexpError(f"port {port} on {host} is in use (or not allowed); pick another with --port, "
                             "or leave --port out to take the next free one")
        return port, None
    for candidate in range(DEFAULT_PORT, DEFAULT_PORT + 100):
        if _bindable(host, candidate):
            note = None if candidate == DEFAULT_PORT else f"port {DEFAULT_PORT} is in use; using {candidate}"
            return candidate, note
    raise BnexpError(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + 99} on {host} are all in use; pick one with --port")


def url_for(host: str, port: int) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/"


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
    for stale in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = stale.name[len(TEMP_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)  # links inside are unlinked, never followed
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TensorBoard:
    """A TensorBoard subprocess over ``logdir``, its output in ``log`` (shown if it fails to start).
    It dies with this process, however this process ends."""

    def __init__(self, logdir: Path, host: str, port: int, log: Path):
        self.url, self.log = url_for(host, port), log
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
                   "--port", str(port), "--reload_interval", "5"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                                            preexec_fn=_die_with(os.getpid()), start_new_session=True)

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

    def wait(self) -> int:
        return self.process.wait()

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
