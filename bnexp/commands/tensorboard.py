"""``bnexp tensorboard [RUN|SWEEP ...]``: TensorBoard over exactly the selected runs (all by default)."""

from __future__ import annotations

from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import output_dir_option, output_root

REFRESH_S = 5.0  # how often runs that appeared since (a running sweep's new jobs) are linked


def tensorboard(
    refs: Optional[List[str]] = typer.Argument(None, help="Runs or sweeps: id prefixes, names or directories."),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="Only runs matching this query (among "
                                        "those named, or all), e.g. \"norm.kind == 'custom'\" (docs/query.md)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: Optional[int] = typer.Option(
        None, "--port", "-p", help="Port; taken -> error. Default 6006, or the next free port (said plainly)."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Start TensorBoard over the given runs and sweeps (all runs when none are given), with one HParams
    table across them; print its URL and stop cleanly on Ctrl-C.

    The printed link opens TIME SERIES with val/acc, val/loss, train/loss and train/acc pinned first
    and smoothing 0 (per-epoch curves); CUSTOM SCALARS overlays train and val loss and accuracy.
    Per-channel gamma/beta cards appear only for runs trained with log_channels=N."""
    import time
    from pathlib import Path

    from rich.console import Console

    from bnexp.core.errors import BnexpError, sigterm_as_interrupt
    from bnexp.views import dashboard

    console = Console(stderr=True)
    root = output_root(output_dir)
    if where:
        from bnexp.commands._shared import select_run_dirs

        refs = [str(d) for d in select_run_dirs(refs, where, root)]
    chosen_port, note = dashboard.choose_port(host, port)
    with sigterm_as_interrupt(), dashboard.private_dir() as tmp:
        logdir = dashboard.Logdir(Path(tmp) / "logdir", list(refs or []), root)
        logdir.path.mkdir()
        with console.status("linking runs...") as status:
            count = logdir.refresh(progress=lambda n: status.update(f"linking runs... {n:,}"))
            if not count:
                raise BnexpError(f"no runs in {' '.join(refs) if refs else root} yet; "
                                 "make some with `bnexp train` or `bnexp sweep`")
            status.update(f"reading the configs of {count:,} runs for the HParams table...")
            logdir.write_experiment()
        for problem in logdir.skipped:
            console.print(f"[yellow]left out of the HParams table[/yellow]: {problem}", highlight=False)
        with console.status("starting TensorBoard..."):
            board = dashboard.start_tensorboard(logdir.path, host, chosen_port, Path(tmp) / "tensorboard.log",
                                                move_on=port is None)
        if board.port != chosen_port:  # another dashboard took it meanwhile
            note = f"port {dashboard.DEFAULT_PORT} is in use; using {board.port}"
        if note:
            console.print(f"[yellow]{note}[/yellow]")
        try:
            with console.status("starting TensorBoard..."):
                board.wait_ready()
            opening = dashboard.opening_url(board.url)
            out = Console()
            out.print(f"TensorBoard on [bold]{count:,}[/bold] run{'s' * (count != 1)}: "
                      f"[link={opening}]{board.url}[/link]  (Ctrl-C to stop)", highlight=False)
            # the whole link on a line of its own, wrapped by the terminal (never broken by us): copyable
            out.print(f"loss and accuracy first, unsmoothed: {opening}", highlight=False, soft_wrap=True)
            while board.process.poll() is None:
                time.sleep(REFRESH_S)
                logdir.refresh()
            raise BnexpError(f"TensorBoard exited with code {board.process.returncode}; its log: "
                             f"{board.log.read_text(errors='replace').strip()[-300:]}")
        except KeyboardInterrupt:
            Console().print("TensorBoard stopped")
        finally:
            board.stop()


def register(app: typer.Typer) -> None:
    add(app, "tensorboard", tensorboard)
