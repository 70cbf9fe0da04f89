"""What continuing a sweep (``--resume``, ``--study``) would do, found without writing anything:
for ``--dry-run``, and to say so when there is nothing left to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bnexp.core.errors import BnexpError


@dataclass
class Preview:
    sweep_dir: Path
    kind: str  # grid | optuna
    launcher: str
    pending: dict[int, list[str]] = field(default_factory=dict)  # grid: jobs that would run, by number
    jobs: int = 0  # grid: all jobs
    trials: int = 0  # optuna: trials the study has
    completed: int = 0  # optuna: of which completed
    target: int = 0  # optuna: what --trials (or the sweep) asks for
    counts_completed: bool = False  # a worker's target counts completed trials, a batch's all trials
    done: bool = False


def preview(ref: str, *, study: bool, trials: Optional[int], worker: bool = False) -> Preview:
    from bnexp.config.compose import load
    from bnexp.launch.plan import Plan, check_recorded_plan
    from bnexp.launch.sweep import pending_jobs
    from bnexp.store.catalog import resolve
    from bnexp.store.registry import read_sweep

    kind, sweep_dir = resolve(ref, Path(load([]).output_dir))
    option = "--study" if study else "--resume"
    if kind != "sweep":
        raise BnexpError(f"{option} {ref}: {sweep_dir.name} is a run, not a sweep; continue a run with: "
                         f"bnexp train resume={sweep_dir.name}")
    sweep_dir = sweep_dir.resolve()
    sweep = read_sweep(sweep_dir)
    p = Plan(**{k: v for k, v in sweep.items() if k in Plan.__dataclass_fields__})
    check_recorded_plan(p, sweep_dir / "sweep.json")
    if study and p.kind != "optuna":
        raise BnexpError(f"--study {ref}: {sweep_dir.name} is not an Optuna search (those are made with --trials); "
                         "continue a grid with --resume")
    if trials is not None and p.kind != "optuna":
        raise BnexpError(f"--trials {trials}: {sweep_dir.name} is a grid; --trials continues Optuna searches")
    if trials is not None and trials < 1:
        raise BnexpError(f"--trials {trials}: must be >= 1")
    result = Preview(sweep_dir, p.kind, p.launcher)
    if p.kind == "grid":
        result.pending, result.jobs = pending_jobs(sweep_dir, p), len(p.grid)
        result.done = not result.pending
        return result
    import optuna
    from optuna.trial import TrialState

    from bnexp.launch.search import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sweep_dir.name, storage=open_storage(sweep_dir, p.storage))  # reads only
    existing = study.get_trials(deepcopy=False)
    result.trials = len(existing)
    result.completed = sum(1 for t in existing if t.state == TrialState.COMPLETE)
    result.target, result.counts_completed = (trials or p.trials), worker
    result.done = (result.completed if worker else result.trials) >= result.target
    return result


def print_preview(preview: Preview) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    name = preview.sweep_dir.name
    if preview.kind == "grid":
        console.print(f"--resume {name} would run {len(preview.pending)} of its {preview.jobs} jobs "
                      f"(launcher {preview.launcher}):")
        for number, job in preview.pending.items():
            console.print(f"  {number}: {' '.join(job)}", markup=False)
    elif preview.done:
        print_nothing_to_do(preview)
    else:
        have = preview.completed if preview.counts_completed else preview.trials
        console.print(f"--study {name} would run {preview.target - have} more trial(s): the study has "
                      f"{preview.trials} ({preview.completed} completed), --trials asks for {preview.target}")
    console.print("dry run: nothing was run or written")


def print_nothing_to_do(preview: Preview) -> None:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    name = preview.sweep_dir.name
    if preview.kind == "grid":
        console.print(f"nothing to resume: all {preview.jobs} jobs of {name} completed (or diverged)")
        return
    what = "completed trials" if preview.counts_completed else "trials"
    console.print(f"nothing to do: study {name} already has {preview.trials} trials ({preview.completed} completed) "
                  f"and --trials {preview.target} is the number of {what} to reach; ask for more with: "
                  f"bnexp sweep --study {name} --trials {max(preview.trials, preview.target) + preview.target}")
