"""``bnexp sweep OVERRIDES...``: run a grid (or an Optuna search) of training jobs, then table them."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.core.errors import BnexpError

EPILOG = "\n\n".join([
    "[bold]Grid[/bold] (Hydra multirun syntax): comma lists, range(), choice(), glob().",
    "  bnexp sweep norm=none,custom,builtin optimizer.lr=0.1,1.0 epochs=3",
    "  bnexp sweep 'norm=glob(*)' 'batch_size=range(32,129,32)' -j 2",
    "  bnexp sweep model=lenet,convnet hydra/launcher=submitit_slurm hydra.launcher.partition=gpu",
    "  bnexp sweep norm.sync=true,false nproc=4 --launcher submitit_slurm hydra.launcher.gpus_per_node=4 --dry-run",
    "[bold]Search[/bold] (Optuna, TPE by default; the study persists in the sweep directory):",
    "  bnexp sweep --trials 20 'optimizer.lr=tag(log,interval(0.01,2))' norm=none,custom 'batch_size=range(16,129,16)'",
    "  bnexp sweep --study 20261122-1815 --trials 30   (continue that search up to 30 trials)",
    "[bold]Continue[/bold] a stopped sweep (jobs not completed run again, from their checkpoints):",
    "  bnexp sweep --resume 20261122-1815",
    "Jobs are ordinary runs under <output_dir>/sweeps/<sweep id>/; a failed or diverged job does not stop "
    "the sweep, and the exit code is 1 when any job did not complete. Quote arguments with parentheses.",
])


def _dry_run(p) -> None:
    from rich.console import Console

    from bnexp.core.vocab import higher_is_better
    from bnexp.launch.plan import describe

    console = Console()
    if p.kind == "grid":
        console.print(f"{len(p.grid)} jobs, launcher {p.launcher}:")
        for i, job in enumerate(p.grid):
            console.print(f"  {i}: {' '.join(job)}", highlight=False)
    else:
        goal = "maximizing" if higher_is_better(p.metric) else "minimizing"
        workers = f", {p.workers} asynchronous workers" if p.workers else ""
        console.print(f"Optuna search ({p.sampler}), {p.trials} trials {goal} {p.metric}, launcher {p.launcher}{workers}; "
                      f"fixed: {' '.join(p.fixed) or '-'}; space:", highlight=False)
        for key, distribution in p.space.items():
            console.print(f"  {key}: {describe(distribution)}", highlight=False)
    if p.launcher == "submitit_slurm":
        from bnexp.launch.cluster import sbatch_script
        from bnexp.launch.sweep import launcher_settings

        script, notes = sbatch_script(p, launcher_settings(p))
        console.print("\nsbatch script submitit would submit (SWEEP_ID stands for the sweep's id):\n", highlight=False)
        console.print(script, highlight=False, markup=False, soft_wrap=True)
        for note in notes:
            console.print(f"note: {note}", style="yellow", highlight=False, markup=False, soft_wrap=True)


def sweep(
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Hydra overrides; comma lists / range() / choice() / glob() sweep, interval() is searched, "
                   "hydra/launcher=NAME and hydra.launcher.* configure the launcher."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", "-j", help="Jobs at once (n_jobs of joblib, chosen when no launcher is given; "
                                   "array_parallelism on Slurm; trials per batch of a search)."),
    launcher: Optional[str] = typer.Option(
        None, "--launcher", help="basic, joblib, submitit_local or submitit_slurm (same as hydra/launcher=NAME)."),
    metric: str = typer.Option("best_val_acc", "--metric", help="Sorts the table; the objective of a search "
                               "(maximized for accuracies, minimized for losses)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Search with Optuna for N trials instead of a grid."),
    study: Optional[str] = typer.Option(None, "--study", help="Continue the Optuna search of an earlier sweep "
                                        "(its id prefix or directory) up to --trials trials."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue an earlier sweep: re-run its jobs that "
                                         "did not complete (failed, interrupted, dead), skip the completed ones."),
    sampler: str = typer.Option("tpe", "--sampler", help="Optuna sampler: tpe or random."),
    sampler_seed: Optional[int] = typer.Option(None, "--sampler-seed", help="Seed of the Optuna sampler "
                                               "(default 0; a continued search advances it past its trials)."),
    worker: bool = typer.Option(False, "--worker", help="Work on the search in this process: ask a trial, train "
                                "it, tell the result, until --trials of the study's trials have ended (completed "
                                "or failed). Start any number (--study ID --worker) on machines that see the sweep "
                                "directory."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Run the search with N asynchronous workers "
                                          "(ask, train, tell; none waits for another's trial), started by the "
                                          "launcher: child processes here, or a job array of N tasks on Slurm."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Keep the Optuna study in this database "
                                          "(any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db) instead "
                                          "of the journal file in the sweep directory."),
    name: Optional[str] = typer.Option(None, "--name", help="Label added to the sweep id."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the jobs (or search space), run nothing."),
) -> None:
    """Run every combination of the swept overrides (or an Optuna search with --trials) as separate runs
    of one sweep, through Hydra's multirun launchers; ends with a table of all jobs."""
    from rich.console import Console

    from bnexp.core.errors import sigterm_as_interrupt
    from bnexp.launch import sweep as sweeps
    from bnexp.launch.plan import plan
    from bnexp.store.registry import read_sweep
    from bnexp.store.sweeps import job_rows
    from bnexp.views.sweep_table import sweep_table
    from bnexp.views.terminal import print_command

    overrides = list(overrides or [])
    earlier = study or resume
    if study and resume:
        raise BnexpError("--study and --resume both continue a sweep; give one of them")
    if worker and (resume or (not study and not trials)):
        raise BnexpError("--worker works on an Optuna search: start one with --trials N, or join one with "
                         "--study ID")
    if workers is not None:
        if workers < 1:
            raise BnexpError(f"--workers {workers}: must be >= 1")
        if worker or resume or (not study and not trials):
            raise BnexpError("--workers N starts N workers on an Optuna search: with --trials N (a new search) or "
                             "--study ID (continue one); --worker joins one in this process instead")
        if jobs is not None:
            raise BnexpError(f"--jobs {jobs} sizes the batches of a search; --workers {workers} runs it without "
                             "batches: give one of them")
    if storage and earlier and not worker:
        raise BnexpError("--storage names where a new search keeps its study (or, with --worker, where to "
                         "find it); a continued sweep uses the storage it was made with")
    if earlier:
        if overrides:
            raise BnexpError(f"{'--study' if study else '--resume'} continues a sweep with its saved overrides; "
                             f"drop {' '.join(overrides)}")
        from bnexp.launch import continuing

        preview = continuing.preview(earlier, study=bool(study), trials=trials, worker=worker or bool(workers))
        if dry_run:
            continuing.print_preview(preview)
            return
        if preview.done:
            continuing.print_nothing_to_do(preview)
            return
        session = (sweeps.join(study, trials, sampler_seed, storage) if worker
                   else sweeps.resume(earlier, trials, jobs, sampler_seed, workers))
    else:
        if storage and not trials:
            raise BnexpError("--storage is where an Optuna search keeps its study; add --trials N")
        p = plan(overrides, launcher=launcher, jobs=jobs, metric=metric, trials=trials,
                        sampler=sampler, sampler_seed=sampler_seed or 0, storage=storage)
        p.workers = workers or 0
        if dry_run:
            _dry_run(p)
            return
        session = sweeps.start(p, name, jobs, worker=worker)
    p, sweep_dir = session.plan, session.dir
    console = Console()
    at_once = f", {p.jobs_at_once} at once" if p.jobs_at_once > 1 else ""
    if p.workers and not session.worker:
        at_once = f", {p.workers} asynchronous worker{'s' if p.workers > 1 else ''}"
    what = f"{len(p.grid)} jobs" if p.kind == "grid" else f"Optuna search to {p.trials} trials ({p.sampler})"
    if session.worker:
        what = f"worker (pid {os.getpid()}) of the Optuna search to {p.trials} trials ({p.sampler})"
    console.print(f"sweep [bold]{sweep_dir.name}[/bold]: {what}, launcher {p.launcher}{at_once}\n  {sweep_dir}",
                  highlight=False)
    try:
        with sigterm_as_interrupt():
            rows = sweeps.run(session)
    except KeyboardInterrupt:
        console.print(sweep_table(read_sweep(sweep_dir), job_rows(sweep_dir), p.metric))
        print_command(console, "interrupted; continue with:", f"bnexp sweep --resume {sweep_dir.name}")
        raise typer.Exit(130)
    summary = read_sweep(sweep_dir)
    console.print(sweep_table(summary, rows, p.metric))
    best = (summary.get("optuna") or {}).get("best")
    if best:
        console.print(f"best trial {best['trial']}: {p.metric} {best['value']:.4f} with "
                      f"{' '.join(f'{k}={v}' for k, v in best['params'].items())} (run {best['run']})",
                      highlight=False)
    bad = [r for r in rows if r.status != "completed"]
    for label, command in (("compare", "bnexp compare"), ("dashboard", "bnexp tensorboard")):
        # one line each, never folded: the commands are meant to be copied whole
        console.print(f"{label}: {command} {sweep_dir.name}", highlight=False, soft_wrap=True)
    if bad:
        console.print(f"sweep {summary.get('status')}: [red]{len(bad)} of {len(rows)} jobs did not complete[/red] "
                      f"({', '.join(sorted({r.status for r in bad}))})")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    add(app, "sweep", sweep, epilog=EPILOG)
