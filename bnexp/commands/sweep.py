"""``bnexp sweep OVERRIDES...``: run a grid (or an Optuna search) of training jobs, then table them."""

from __future__ import annotations

from typing import List, Optional

import typer

from bnexp.errors import BnexpError

EPILOG = "\n\n".join([
    "[bold]Grid[/bold] (Hydra multirun syntax): comma lists, range(), choice(), glob().",
    "  bnexp sweep norm=none,custom,builtin optimizer.lr=0.1,1.0 epochs=3",
    "  bnexp sweep 'norm=glob(*)' 'batch_size=range(32,129,32)' -j 2",
    "  bnexp sweep model=lenet,convnet hydra/launcher=submitit_slurm hydra.launcher.partition=gpu",
    "[bold]Search[/bold] (Optuna, TPE by default; the study persists in the sweep directory):",
    "  bnexp sweep --trials 20 'optimizer.lr=tag(log,interval(0.01,2))' norm=none,custom 'batch_size=range(16,129,16)'",
    "  bnexp sweep --study 20261122-1815 --trials 30   (continue that search up to 30 trials)",
    "Jobs are ordinary runs under <output_dir>/sweeps/<sweep id>/; a failed or diverged job does not stop "
    "the sweep, and the exit code is 1 when any job did not complete. Quote arguments with parentheses.",
])


def _dry_run(p) -> None:
    from rich.console import Console

    from bnexp.sweep import describe, maximize

    console = Console()
    if p.kind == "grid":
        console.print(f"{len(p.grid)} jobs, launcher {p.launcher}:")
        for i, job in enumerate(p.grid):
            console.print(f"  {i}: {' '.join(job)}", highlight=False)
    else:
        goal = "maximizing" if maximize(p.metric) else "minimizing"
        console.print(f"Optuna search ({p.sampler}), {p.trials} trials {goal} {p.metric}, launcher {p.launcher}; "
                      f"fixed: {' '.join(p.fixed) or '-'}; space:", highlight=False)
        for key, distribution in p.space.items():
            console.print(f"  {key}: {describe(distribution)}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command(
        "sweep",
        help="Run every combination of the swept overrides (or an Optuna search with --trials) as separate "
             "runs of one sweep, through Hydra's multirun launchers; ends with a table of all jobs.",
        epilog=EPILOG,
    )
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
        sampler: str = typer.Option("tpe", "--sampler", help="Optuna sampler: tpe or random."),
        sampler_seed: int = typer.Option(0, "--sampler-seed", help="Seed of the Optuna sampler."),
        name: Optional[str] = typer.Option(None, "--name", help="Label added to the sweep id."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the jobs (or search space), run nothing."),
    ) -> None:
        from rich.console import Console

        from bnexp import sweep as sweeps

        overrides = list(overrides or [])
        if study:
            if overrides:
                raise BnexpError(f"--study continues a search with its saved overrides; drop {' '.join(overrides)}")
            p, sweep_dir, hydra_app = sweeps.resume_plan(study, trials, jobs)
        else:
            p = sweeps.plan(overrides, launcher=launcher, jobs=jobs, metric=metric, trials=trials,
                            sampler=sampler, sampler_seed=sampler_seed)
            if dry_run:
                _dry_run(p)
                return
            sweep_dir, hydra_app = sweeps.start(p, name, jobs)
        console = Console()
        at_once = f", {p.jobs_at_once} at once" if p.jobs_at_once > 1 else ""
        what = f"{len(p.grid)} jobs" if p.kind == "grid" else f"Optuna search to {p.trials} trials ({p.sampler})"
        console.print(f"sweep [bold]{sweep_dir.name}[/bold]: {what}, launcher {p.launcher}{at_once}\n  {sweep_dir}",
                      highlight=False)
        try:
            rows = sweeps.run(p, sweep_dir, hydra_app)
        except KeyboardInterrupt:
            console.print(sweeps.table(sweeps.read_sweep(sweep_dir), sweeps.job_rows(sweep_dir), p.metric))
            resume = f"; continue with: bnexp sweep --study {sweep_dir.name}" if p.kind == "optuna" else ""
            console.print(f"[yellow]interrupted[/yellow]{resume}", highlight=False)
            raise typer.Exit(130)
        summary = sweeps.read_sweep(sweep_dir)
        console.print(sweeps.table(summary, rows, p.metric))
        best = (summary.get("optuna") or {}).get("best")
        if best:
            console.print(f"best trial {best['trial']}: {p.metric} {best['value']:.4f} with "
                          f"{' '.join(f'{k}={v}' for k, v in best['params'].items())} (run {best['run']})",
                          highlight=False)
        bad = [r for r in rows if r["status"] != "completed"]
        console.print(f"compare: bnexp compare {sweep_dir.name}    dashboard: bnexp tensorboard {sweep_dir.name}",
                      highlight=False)
        if bad:
            console.print(f"[red]{len(bad)} of {len(rows)} jobs did not complete[/red] "
                          f"({', '.join(sorted({r['status'] for r in bad}))})")
            raise typer.Exit(1)
