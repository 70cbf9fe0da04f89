"""The live view behind ``bnexp watch`` (and ``bnexp runs --watch``): a table of the runs and sweeps
being trained, rebuilt from their records at every refresh.

One refresh = one walk of the output directory (records through its index) plus the end
of ``metrics.jsonl`` of each run shown. A run is shown while it is ``running`` or ``stalled``
(alive, heartbeat late: :mod:`bnexp.store.live`), when it died within the last hour (a crash just
before watching), and, once seen training, until the view stops, with how it ended. Runs and
sweeps named on the command line are always shown. Nothing here writes anything.

Progress is the step of the last training log against the steps the run trains for; the ETA is
those remaining steps at the run's own pace so far (its training time over its steps, validation
included; before its first epoch ends, at the current speed), and for a sweep the mean time of its
finished jobs times the jobs left, over the jobs it runs at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from bnexp.core.text import escape
from bnexp.core.vocab import STATUS_STYLE, fmt_number, fmt_seconds

RECENT_S = 3600.0  # a run that died this recently is shown even when not seen training
ACTIVE = ("running", "stalled")
ENDED = ("completed", "failed", "diverged", "interrupted", "partial")
STYLES = {**STATUS_STYLE, "stalled": "bold yellow"}


@dataclass
class Row:
    """One line of the table: a run, or a sweep with its jobs below it."""

    kind: str  # run | sweep | job
    name: str
    status: str
    progress: str = "-"
    eta: Optional[float] = None
    loss: Optional[float] = None
    val_acc: Optional[float] = None
    beat: Optional[float] = None  # seconds since the heartbeat
    note: Optional[str] = None  # shown under the table (why dead, how long stalled)


@dataclass
class Snapshot:
    rows: list[Row]
    root: Path
    taken: datetime

    def summary(self) -> str:
        """``2 running, 1 stalled, 1 dead · 1 sweep``: the runs by status (active first), the sweeps."""
        counts: dict[str, int] = {}
        for row in self.rows:
            if row.kind != "sweep":
                counts[row.status] = counts.get(row.status, 0) + 1
        order = {status: i for i, status in enumerate((*ACTIVE, "dead"))}
        runs = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 9)))
        sweeps = sum(row.kind == "sweep" for row in self.rows)
        return " · ".join(filter(None, [runs, f"{sweeps} sweep{'s' * (sweeps != 1)}" if sweeps else ""]))


def run_progress(record, tail: dict[str, dict]) -> tuple[str, Optional[float], Optional[float]]:
    """``(text, fraction done, ETA seconds)`` of one run from its record and last metrics records."""
    train, epoch_rec = tail.get("train", {}), tail.get("epoch", {})
    step = max(int(train.get("step", 0) or 0), int(record.metrics.get("step", 0) or 0))
    epoch = train.get("epoch") or record.metrics.get("epoch") or 0
    total = record.total_steps or record.max_steps
    fraction = min(step / total, 1.0) if total else None
    parts = []
    if fraction is not None:
        parts.append(f"{100 * fraction:.0f}%")
    if record.epochs:
        parts.append(f"ep {epoch}/{record.epochs}")
    elif total:
        parts.append(f"{step}/{total}")
    eta = None
    if total and step < total and record.status == "running":
        done_step = int(epoch_rec.get("step", 0) or 0)
        if record.duration_s and done_step:  # the run's own pace, validation included
            eta = (total - step) * record.duration_s / done_step
        elif train.get("examples_per_s") and record.batch_size:
            eta = (total - step) * record.batch_size / float(train["examples_per_s"])
    elif total and step >= total and record.status == "running":
        eta = 0.0
    return " ".join(parts) or "-", fraction, eta


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_row(record, kind: str, name: str, stall_after: float, now: datetime) -> Row:
    from bnexp.store.live import heartbeat_age, last_records, live_status

    status = live_status(record.status, record.heartbeat, stall_after, now)
    tail = last_records(record.dir) if record.dir and record.status != "unreadable" else {}
    progress, _, eta = run_progress(record, tail)
    beat = heartbeat_age(record.heartbeat, now) if status in ACTIVE else None
    note = None
    if status == "stalled":
        note = (f"{name}: stalled: no heartbeat for {fmt_seconds(beat)} (expected every "
                f"{_heartbeat_s():.0f} s); its process is alive")
    elif status in ("dead", "unreadable", "failed") and record.message:
        note = f"{name}: {status}: {_own_line(record.message)}"
    loss = _number(tail.get("train", {}).get("loss")) or _number(record.metrics.get("train_loss"))
    val_acc = _number(tail.get("epoch", {}).get("val_acc")) or _number(record.metrics.get("val_acc"))
    return Row(kind, name, status, progress, eta if status == "running" else None, loss, val_acc, beat, note)


def _own_line(message: str) -> str:
    """The command that continues a dead run or sweep on a line of its own (never wrapped inside it)."""
    return message.replace("; continue with: ", "\n  continue with: ")


def _heartbeat_s() -> float:
    from bnexp.store.lock import HEARTBEAT_S

    return HEARTBEAT_S


def sweep_row(sweep: dict, name: str, jobs: list, running_etas: list[float]) -> Row:
    total = len(sweep.get("grid") or []) if sweep.get("kind", "grid") == "grid" else int(sweep.get("trials") or 0)
    finished = [r for r in jobs if r.status in ENDED]
    progress = f"{len(finished)}/{total} jobs" if total else f"{len(finished)} jobs"
    eta = None
    status = str(sweep.get("status"))
    durations = [r.duration_s for r in finished if r.status == "completed" and r.duration_s]
    if status == "running" and total and durations:
        at_once = max(1, int(sweep.get("jobs_at_once") or 1))
        waiting = max(0, total - len(finished) - len(running_etas))
        eta = waiting * (sum(durations) / len(durations)) / at_once + max(running_etas, default=0.0)
    accs = [r.metric("best_val_acc") for r in jobs if r.metric("best_val_acc") is not None]
    note = f"{name}: {status}: {_own_line(str(sweep['message']))}" if status == "dead" and sweep.get("message") else None
    return Row("sweep", name, status, progress, eta, None, max(accs) if accs else None, None, note)


@dataclass
class Watch:
    """What one ``bnexp watch`` shows, refresh after refresh. ``refs``: runs and sweeps always shown
    (none: every active one under ``root``). Remembers the runs it saw active, so a run that ends
    while watched stays, showing how it ended."""

    root: Path
    refs: list[str] = field(default_factory=list)
    stall_after: float = 3 * 30.0  # bnexp.store.live.STALL_AFTER_S (not imported here: the store stays lazy)
    seen: set[str] = field(default_factory=set)

    def __post_init__(self):
        from bnexp.store.catalog import resolve_all

        self.pinned = {str(p.resolve()) for _, p in resolve_all(self.refs, self.root)} if self.refs else set()

    def _shown(self, record, path: str, sweep_path: Optional[str], now: datetime) -> bool:
        from bnexp.store.live import heartbeat_age

        if path in self.pinned or (sweep_path and sweep_path in self.pinned) or path in self.seen:
            return True
        if self.pinned:
            return False
        if record.status == "running":  # alive (stalled or not)
            return True
        if record.status == "dead":
            age = heartbeat_age(record.heartbeat, now)
            return age is not None and age <= RECENT_S
        return False

    def snapshot(self, now: Optional[datetime] = None) -> Snapshot:
        from bnexp.core.errors import BnexpError
        from bnexp.store.files import UnreadableFile
        from bnexp.store.listing import Listing
        from bnexp.store.registry import read_sweep
        from bnexp.views.dashboard import short_id

        now = now or datetime.now().astimezone()
        sweeps: dict[str, tuple[dict, list]] = {}  # sweep path -> (sweep.json as shown, its job records)
        runs: list[tuple[Any, str, Optional[str]]] = []
        # one walk through the output directory's index: unchanged finished runs are not read again,
        # running ones always are (their heartbeat and live status)
        with Listing(self.root) as listing:
            for entry in listing.sweeps:
                path = str(Path(entry.path).resolve())
                try:
                    sweeps[path] = (read_sweep(Path(entry.path)), [])
                except (UnreadableFile, BnexpError) as exc:
                    sweeps[path] = ({"status": "unreadable", "message": str(exc)}, [])
            for summary, record in zip(listing.runs, listing.records(listing.runs)):
                entry = summary.entry
                path = str(Path(entry.path).resolve())
                sweep_path = str(Path(entry.path).parent.resolve()) if entry.sweep else None
                if sweep_path in sweeps:
                    sweeps[sweep_path][1].append(record)
                runs.append((record, path, sweep_path))

        shown_runs = [(r, p, s) for r, p, s in runs if self._shown(r, p, s, now)]
        for record, path, _ in shown_runs:
            if record.status == "running":
                self.seen.add(path)
        rows: list[Row] = []
        by_sweep: dict[Optional[str], list] = {}
        for item in shown_runs:
            by_sweep.setdefault(item[2], []).append(item)
        active_sweeps = [p for p, (s, _) in sweeps.items()
                         if p in by_sweep or p in self.pinned or (not self.pinned and s.get("status") == "running")]
        for sweep_path in active_sweeps:
            sweep, jobs = sweeps[sweep_path]
            job_rows = []
            for record, _, _ in by_sweep.get(sweep_path, []):
                job = record.id[len(Path(sweep_path).name) + 1:] if record.id.startswith(Path(sweep_path).name + "-") \
                    else record.id
                job_rows.append(run_row(record, "job", job, self.stall_after, now))
            etas = [r.eta for r in job_rows if r.status in ACTIVE and r.eta is not None]
            rows.append(sweep_row(sweep, short_id(Path(sweep_path).name), jobs, etas))
            rows += job_rows
        for record, _, _ in by_sweep.get(None, []):
            rows.append(run_row(record, "run", short_id(record.id), self.stall_after, now))
        return Snapshot(rows, self.root, now)


def render(snapshot: Snapshot, interval: Optional[float] = None):
    """The table (fitted to the console's width), a title with the counts and, under it, why a run
    is dead or stalled."""
    from rich.console import Group
    from rich.text import Text

    from bnexp.views.terminal import Column, FittedTable

    every = f" · every {interval:g} s · Ctrl-C to stop" if interval else ""
    title = f"{snapshot.taken.strftime('%H:%M:%S')} · {snapshot.summary() or 'nothing training'}{every}"
    if not snapshot.rows:
        return Text(f"{title}\nno run or sweep is training under {escape(snapshot.root)}")
    columns = [Column("run"), Column("status"), Column("progress"), Column("eta", "right", priority=1),
               Column("loss", "right", priority=2), Column("val acc", "right", priority=2),
               Column("heartbeat", "right", priority=3)]
    cells = []
    for row in snapshot.rows:
        name = f"  {row.name}" if row.kind == "job" else row.name
        cells.append([(name, "bold" if row.kind == "sweep" else None), (row.status, STYLES.get(row.status, "red")),
                      row.progress, fmt_seconds(row.eta) if row.eta is not None else "-", fmt_number(row.loss),
                      fmt_number(row.val_acc), f"{row.beat:.0f} s ago" if row.beat is not None else "-"])
    table = FittedTable(columns, cells, title=title, hint="a wider terminal shows every column")
    notes = [Text(escape(row.note, "\n"), style=STYLES.get(row.status)) for row in snapshot.rows if row.note]
    return Group(table, *notes)


def follow(view: Watch, interval: float, count: Optional[int], console=None) -> int:
    """Show ``view`` every ``interval`` seconds, ``count`` times (None: until Ctrl-C). On a terminal
    the table is redrawn in place (Rich's Live: the cursor is hidden meanwhile and shown again
    however the loop ends); elsewhere (a pipe, a file, CI) each snapshot is printed once, one
    after another, and ``count`` defaults to 1: a log gets a table, not a stream of redraws.
    Ctrl-C (or SIGTERM) ends it quietly; returns the snapshots shown."""
    import time

    from rich.console import Console
    from rich.live import Live

    from bnexp.core.errors import sigterm_as_interrupt

    console = console or Console()
    live = console.is_terminal
    total = count if count is not None else (None if live else 1)
    shown = 0
    with sigterm_as_interrupt():
        try:
            if live:
                with Live(console=console, auto_refresh=False, transient=False) as screen:
                    while total is None or shown < total:
                        if shown:
                            time.sleep(interval)
                        screen.update(render(view.snapshot(), interval), refresh=True)
                        shown += 1
            else:
                while shown < total:
                    if shown:
                        time.sleep(interval)
                        console.print()
                    console.print(render(view.snapshot(), None))
                    shown += 1
        except KeyboardInterrupt:
            pass
    return shown
