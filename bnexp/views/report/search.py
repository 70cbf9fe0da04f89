"""The report's figures of an Optuna search: the objective against each searched parameter, and the
search history (each trial's objective and the best so far). A search draws these instead of the
batch-size figure: its trials are points in a space, not lines along a batch-size axis."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bnexp.core.vocab import fmt_number, higher_is_better
from bnexp.store.files import SWEEP_FILE, UnreadableFile
from bnexp.views.report import figures
from bnexp.views.report.figures import _empty, _figure
from bnexp.views.report.load import RunData, _final


@dataclass
class Trial:
    number: int
    run: RunData
    value: Optional[float]  # the objective; None when the trial did not finish


@dataclass
class Search:
    """An Optuna sweep as the report draws it: what was searched, for which metric, and its trials."""

    sweep_id: str
    metric: str
    params: list[str]
    log: dict[str, bool] = field(default_factory=dict)  # parameters searched on a log scale
    trials: list[Trial] = field(default_factory=list)

    @property
    def maximize(self) -> bool:
        return higher_is_better(self.metric)

    def best(self) -> Optional[Trial]:
        done = [t for t in self.trials if t.value is not None]
        if not done:
            return None
        return (max if self.maximize else min)(done, key=lambda t: t.value)

    def value_of(self, trial: Trial, param: str) -> Any:
        config = trial.run.config
        for key in (param, f"{param}.kind", f"{param}.name"):  # a group (norm=custom) is stored as norm.kind
            if key in config:
                return config[key]
        return None


def find_search(runs: list[RunData]) -> Optional[Search]:
    """The Optuna search all ``runs`` belong to (their parent directory's ``sweep.json`` says
    ``kind: optuna``), or None: runs of a grid, of several sweeps, or loose runs."""
    from bnexp.store.registry import read_sweep

    parents = {r.path.parent for r in runs}
    if len(parents) != 1:
        return None
    sweep_dir = parents.pop()
    if not (sweep_dir / SWEEP_FILE).is_file():
        return None
    try:
        sweep = read_sweep(sweep_dir)
    except (UnreadableFile, TypeError, ValueError):
        return None
    if sweep.get("kind") != "optuna" or not isinstance(sweep.get("swept"), list):
        return None
    metric = str(sweep.get("metric") or "best_val_acc")
    search = Search(sweep_id=str(sweep.get("id") or sweep_dir.name), metric=metric,
                    params=[str(p) for p in sweep["swept"]])
    for param, text in (sweep.get("space") or {}).items():
        try:
            search.log[param] = bool(json.loads(text).get("attributes", {}).get("log"))
        except (TypeError, ValueError, AttributeError):
            pass
    for run in runs:
        number = run.path.name[len(sweep_dir.name) + 1:].split("-")[0]
        value = _final(run, metric) if run.summary.get("status") == "completed" else None
        search.trials.append(Trial(int(number) if number.isdigit() else len(search.trials), run,
                                   value if isinstance(value, (int, float)) else None))
    search.trials.sort(key=lambda t: t.number)
    return search


def _objective_label(search: Search) -> str:
    return f"{search.metric} ({'higher' if search.maximize else 'lower'} is better)"


def plot_search_objective(search: Search, path: Path) -> Path:
    """The objective of every finished trial against each searched parameter; colour = trial number
    (early trials light, late dark: where the sampler went), the best trial a star."""
    from matplotlib import colormaps

    params = search.params or ["(no parameter)"]
    fig, axes = _figure("search_objective", 1, len(params), sharey=True)
    done = [t for t in search.trials if t.value is not None]
    best = search.best()
    cmap = colormaps["viridis"]
    last = max((t.number for t in search.trials), default=0) or 1
    scatter = None
    for ax, param in zip(axes[0], params):
        points = [(search.value_of(t, param), t) for t in done]
        points = [(x, t) for x, t in points if x is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
        xs = [x if numeric else str(x) for x, _ in points]
        if points:
            scatter = ax.scatter(xs, [t.value for _, t in points], c=[t.number for _, t in points], cmap=cmap,
                                 vmin=0, vmax=last, s=36, edgecolors="#333333", linewidths=0.5, zorder=3)
            if best is not None and search.value_of(best, param) is not None:
                x = search.value_of(best, param)
                ax.scatter([x if numeric else str(x)], [best.value], marker="*", s=260, facecolors="none",
                           edgecolors="#d62728", linewidths=1.5, zorder=4, label=f"best: trial {best.number}")
                ax.legend(loc="best", fontsize="small", frameon=False)
            if numeric and search.log.get(param):
                ax.set_xscale("log")
        else:
            _empty(ax, "no finished trial")
        ax.set_xlabel(param)
        ax.set_title(f"{search.metric} vs {param}", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_objective_label(search))
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes[0]), label="trial", pad=0.01, aspect=30)
    failed = len(search.trials) - len(done)
    fig.suptitle(f"Optuna search {search.sweep_id}: {len(done)} finished trial(s)"
                 + (f", {failed} without a result (not drawn)" if failed else ""), fontsize="medium")
    return figures._save(fig, path)  # looked up when called (tests keep the figures it saves)


def plot_search_history(search: Search, path: Path) -> Path:
    """Each trial's objective in the order the trials ran, and the best value found so far."""
    fig, axes = _figure("search_history")
    ax = axes[0][0]
    done = [t for t in search.trials if t.value is not None]
    if done:
        ax.plot([t.number for t in done], [t.value for t in done], linestyle="none", marker="o", color="#1f77b4",
                markersize=6, label="trial")
        xs, best_so_far, best = [], [], None
        for t in done:
            if best is None or (t.value > best if search.maximize else t.value < best):
                best = t.value
            xs.append(t.number)
            best_so_far.append(best)
        ax.step(xs, best_so_far, where="post", color="#d62728", linewidth=1.8, label="best so far")
        top = search.best()
        if top is not None:
            settings = ", ".join(f"{p}={_value(search.value_of(top, p))}" for p in search.params)
            ax.set_title(f"search history: best {fmt_number(top.value)} at trial {top.number} ({settings})",
                         fontsize="medium")
        ax.legend(loc="best", fontsize="small", frameon=False)
    else:
        _empty(ax, "no finished trial")
        ax.set_title("search history", fontsize="medium")
    failed = [t.number for t in search.trials if t.value is None]
    ax.set_xlabel("trial" + (f"\nwithout a result (not drawn): trial {', '.join(map(str, failed))}" if failed else ""))
    ax.set_ylabel(_objective_label(search))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return figures._save(fig, path)  # looked up when called (tests keep the figures it saves)


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
