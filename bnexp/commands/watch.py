"""``bnexp watch [RUN|SWEEP ...]``: a live table of the runs and sweeps being trained."""

from __future__ import annotations

from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import output_dir_option, output_root, refs_argument

DEFAULT_INTERVAL_S = 2.0


def watch_options(refs, interval: float, count: Optional[int], stalled_after: Optional[float],
                  output_dir: Optional[str]) -> None:
    """Check the options and follow (shared by ``bnexp watch`` and ``bnexp runs --watch``)."""
    from bnexp.core.errors import BnexpError
    from bnexp.store.live import STALL_AFTER_S
    from bnexp.store.registry import check_root
    from bnexp.views.live import Watch, follow

    if not interval > 0:
        raise BnexpError(f"--interval {interval:g}: must be a number of seconds > 0")
    if count is not None and count < 1:
        raise BnexpError(f"--count {count}: must be >= 1")
    if stalled_after is not None and not stalled_after > 0:
        raise BnexpError(f"--stalled-after {stalled_after:g}: must be a number of seconds > 0")
    root = output_root(output_dir)
    check_root(root, output_dir)
    follow(Watch(root, list(refs or []), STALL_AFTER_S if stalled_after is None else stalled_after), interval, count)


def watch(
    refs: Optional[List[str]] = refs_argument("Runs or sweeps to follow (id prefixes, names or directories); "
                                              "default: every run and sweep training now.", required=False),
    interval: float = typer.Option(DEFAULT_INTERVAL_S, "--interval", "-i", help="Seconds between refreshes."),
    count: Optional[int] = typer.Option(None, "--count", "-n", help="Stop after N refreshes (default: until "
                                        "Ctrl-C on a terminal; 1 when the output is not a terminal)."),
    stalled_after: Optional[float] = typer.Option(None, "--stalled-after", help="A live run whose heartbeat is "
                                                  "older than this many seconds is shown stalled (default 90: "
                                                  "three missed heartbeats; a run writes one every 30 s)."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Follow training live: a table of the runs and sweeps being trained, redrawn every --interval
    seconds, with progress (percent of steps, epoch), ETA, last training loss, validation accuracy
    and heartbeat age. A live run whose heartbeat is late is 'stalled'; a run whose process is gone
    is 'dead' (with how to continue it), never 'running'. A run seen training stays in the table
    with how it ended; runs that died in the last hour are shown too. Ctrl-C stops (exit 0). When the
    output is not a terminal (a pipe, a file), one table is printed (or --count tables, --interval
    apart) instead of redrawing.

    Examples: bnexp watch; bnexp watch SWEEP -i 5; bnexp watch --count 1 > status.txt"""
    watch_options(refs, interval, count, stalled_after, output_dir)


def register(app: typer.Typer) -> None:
    add(app, "watch", watch)
