"""Real servers for the tests, each in a temporary directory on its own ports and torn down after:
a one-node Slurm cluster (munged, slurmctld, slurmd) and a PostgreSQL cluster. Nothing of the
machine's own configuration is read or changed (no /etc/slurm, no /run/munge, no system service).

``bash scripts/test.sh`` installs the Debian packages when it runs as root (CI does); elsewhere the
tests that need them skip, saying which binary is missing and how to install it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin/initdb"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on this machine (held open together while choosing)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s\n{tail}")
        time.sleep(0.2)


def _stop_pidfile(pidfile: Path, timeout: float = 10) -> None:
    """SIGTERM the daemon named in ``pidfile``, then SIGKILL it if it is still there after ``timeout``."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Slurm


def slurm_missing() -> str | None:
    """Why a Slurm cluster cannot be started here, or None."""
    missing = [b for b in SLURM_BINARIES if not shutil.which(b)]
    if missing:
        return f"Slurm not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge"
    if os.geteuid() != 0:
        return "the one-node Slurm cluster of the tests runs its daemons as root (slurmd starts jobs as their user)"
    return None


@dataclass
class SlurmCluster:
    """A one-node Slurm cluster in ``root``: clients reach it through ``env`` (``SLURM_CONF``)."""

    root: Path
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    node: str = ""
    env: dict = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def start(self) -> "SlurmCluster":
        root = self.root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        socket_path = root / "munge" / "munge.socket"
        subprocess.run(["munged", "--force", f"--socket={socket_path}", f"--key-file={key}",
                        f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munge' / 'munged.log'}",
                        f"--seed-file={root / 'munge' / 'munged.seed'}"], check=True, capture_output=True)
        ctld_port, slurmd_port = free_ports(2)
        host = socket.gethostname()
        self.node = host
        self.conf.write_text("\n".join([
            "ClusterName=bnexptest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge", f"AuthInfo=socket={socket_path}", "CredType=cred/munge",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "ReturnToService=2",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=1",
            "MinJobAge=300", "KillWait=30", "InactiveLimit=0",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(self.conf)], check=True, env=self.env, capture_output=True)
        _wait(self._node_idle, 60, "the Slurm node", root / "slurmd.log")
        return self

    def _node_idle(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.strip() in ("idle", "mix")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command (squeue, scancel, scontrol ...) against this cluster."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of every job the controller knows, finished ones included."""
        done = self.run("squeue", "-h", "-t", "all", "-o", "%i %T")
        return [tuple(line.split()) for line in done.stdout.splitlines() if line.strip()]

    def active_jobs(self) -> list[tuple[str, str]]:
        return [(job, state) for job, state in self.jobs() if state in ("PENDING", "RUNNING", "CONFIGURING",
                                                                       "COMPLETING", "REQUEUED", "SUSPENDED")]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("scancel", "--full", "-u", "root", check=False)
        for pidfile in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"):
            _stop_pidfile(pidfile)


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_missing() -> str | None:
    import glob

    if not glob.glob(POSTGRES_GLOB):
        return f"PostgreSQL server not installed (no {POSTGRES_GLOB}): apt-get install -y postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed: pip install -c constraints.txt 'bnexp[postgres]'"
    return None


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: postgres refuses root; ``postgres`` (Debian's package user)
    or ``nobody``. None when not root (the server runs as the current user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in ``root``, listening on 127.0.0.1:``port``, trust authentication."""

    root: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://bnexp@127.0.0.1:{self.port}/bnexp"

    def _bin(self, name: str) -> str:
        import glob

        return str(Path(sorted(glob.glob(POSTGRES_GLOB))[-1]).parent / name)

    def _as_server_user(self, *args: str) -> None:
        owner = _server_user()
        subprocess.run(list(args), check=True, capture_output=True, timeout=120, cwd=self.root,
                       user=owner[0] if owner else None, group=owner[1] if owner else None,
                       env={**os.environ, "LC_ALL": "C"})

    def start(self) -> "PostgresCluster":
        data = self.root / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        owner = _server_user()
        if owner:  # the server user must reach its directory: open the path down to it
            os.chown(self.root, *owner)
            for parent in self.root.parents:
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        (self.port,) = free_ports(1)
        self._as_server_user(self._bin("initdb"), "-D", str(data), "-U", "bnexp", "--auth=trust", "-E", "UTF8")
        self._as_server_user(self._bin("pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w",
                             "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")
        self._as_server_user(self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "bnexp", "bnexp")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._as_server_user(self._bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")


@contextlib.contextmanager
def postgres_cluster(root: Path) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
