"""report.md and :func:`build_report`: where the report goes, the figures and tables it holds, the page itself."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from bnexp.core.errors import BnexpError
from bnexp.store.catalog import resolve_all
from bnexp.store.registry import default_root
from bnexp.store.safeio import UnreadableFile, write_atomic
from bnexp.views.report.cells import Cell, label_keys, make_cells
from bnexp.views.report.figures import (
    gap_cells,
    plot_activations,
    plot_batch_size,
    plot_bn_gap,
    plot_curves,
    plot_gradients,
    plot_norm_params,
)
from bnexp.views.report.load import RunData, _final, load_run
from bnexp.views.report.science import CAPTIONS as SCIENCE_CAPTIONS
from bnexp.views.report.science import has_science, plot_depth, plot_science, plot_signal, science_table
from bnexp.views.report.search import find_search, plot_search_history, plot_search_objective
from bnexp.views.report.tables import (
    AGREE_ACC,
    CONVERGED_FRACTION,
    _markdown_table,
    agreement,
    gap_table,
    labels_table,
    metrics_table,
    seed_table,
    welch_table,
)


def default_out_dir(targets: list[str], root: Optional[Path] = None) -> Path:
    """``<dir>/report`` for a single target (a sweep, run or any directory, or the id of a sweep or
    run); for several, ``<output_dir>/reports/<timestamp>``."""
    base = Path(root) if root is not None else default_root()
    if len(targets) == 1:
        (_, folder), = resolve_all(targets, base, allow_plain_dirs=True)
        return folder / "report"
    return base / "reports" / time.strftime("%Y%m%d-%H%M%S")


def check_out_dir(out_dir: Path) -> None:
    """A default report folder must stay inside the folder it reports on: a planted ``report``
    symlink pointing elsewhere is refused, not written through."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.resolve().is_relative_to(out_dir.parent.resolve())):
        raise BnexpError(f"{out_dir} is a symlink to {out_dir.resolve()}, outside {out_dir.parent}; refusing to "
                         "write through it (remove it, or choose a folder with --out)")


def build_report(run_dirs: list[Path], out_dir: Path, title: Optional[str] = None,
                 sources: Optional[list[str]] = None, skipped: Optional[list[str]] = None,
                 html: bool = False) -> dict[str, Path]:
    """Write the figures and ``report.md`` (and with ``html`` the self-contained ``report.html``)
    into ``out_dir``; returns ``{name: path}``. Runs whose record cannot be read are left out, each
    with its reason appended to ``skipped``."""
    runs = []
    for path in run_dirs:
        try:
            runs.append(load_run(path))
        except UnreadableFile as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
    if not runs:
        raise BnexpError("none of the runs could be read: " + "; ".join(skipped or []))
    cells, keys = make_cells(runs)
    runs = [r for c in cells for r in c.runs]
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnexpError(f"cannot create the report directory {out_dir}: {exc.strerror}") from exc
    written = {
        "curves": plot_curves(cells, out_dir / "curves.png"),
        "activations": plot_activations(cells, out_dir / "activations.png"),
        "norm_params": plot_norm_params(cells, out_dir / "norm_params.png"),
    }
    with_gap = gap_cells(cells)
    if with_gap:
        written["bn_gap"] = plot_bn_gap(with_gap, out_dir / "bn_gap.png")
    with_grads = [c for c in cells if c.runs[0].grads]
    if with_grads:
        written["gradients"] = plot_gradients(with_grads, out_dir / "gradients.png")
    search = find_search(runs)
    if search is not None:  # trials are points in a space: objective vs parameter, and the search's history
        written["search_objective"] = plot_search_objective(search, out_dir / "search_objective.png")
        written["search_history"] = plot_search_history(search, out_dir / "search_history.png")
    elif "batch_size" in keys:
        written["batch_size"] = plot_batch_size(cells, keys, out_dir / "batch_size.png")
    if "model.depth" in keys:
        written["depth"] = plot_depth(cells, keys, out_dir / "depth.png")
    if has_science(cells, ("shift", "ics", "smooth", "running_stats")):
        written["science"] = plot_science(cells, out_dir / "science.png")
    if has_science(cells, ("signal",)):
        written["signal"] = plot_signal(cells, out_dir / "signal.png")
    report = out_dir / "report.md"
    write_atomic(report, render_markdown(runs, cells, keys, out_dir, written, title, sources))
    if html:
        from bnexp.views.html_report import render_html

        tables = [("Final metrics per configuration: mean ± std (n) over its seeds", seed_table(cells)),
                  ("Configurations differing in one setting: is the difference larger than seed noise? "
                   "(Welch's t-test on the final val_acc)", welch_table(cells, keys))]
        page = render_html(cells, keys, written, title or "bnexp report", tables, CAPTIONS)
        written["html"] = out_dir / "report.html"
        write_atomic(written["html"], page)
    written["report"] = report
    return written


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


CAPTIONS = {
    "curves": ("Training curves", "Validation accuracy and loss after each epoch, and training loss per logged "
               "window; one line per cell (runs that differ only by seed), the mean over its seeds with a band of "
               "±1 standard deviation (a faint fill with edges). When the norm varies, colour = norm (grey none, orange "
               "custom, blue builtin); every line has its own style and marker, and custom is drawn dashed above "
               "a wide pale builtin, so equal curves stay both visible. When batch sizes differ, training loss "
               "is drawn against examples seen (step × batch size)."),
    "activations": ("Activation distribution over training", "Top: the 15th, 50th and 85th percentiles of unit 0 "
                    "of the last norm site's output (the input of its activation, e.g. the sigmoid), recorded every "
                    "`hist_every_steps` steps — without BN vs with BN, as in Ioffe & Szegedy (2015) Figure 1(b, c); "
                    "one run per cell (the first seed). Bottom: the same percentiles over all units of every norm "
                    "site."),
    "norm_params": ("BN parameters at the end", "Distribution of gamma (scale) and beta (shift) over the "
                    "units/channels of each norm site, for the first run of each cell; norm=none runs have none."),
    "bn_gap": ("Train/eval gap and recalibration", "Validation accuracy with batch statistics (BN in training "
               "mode: each evaluation batch of `eval_batch_size` normalized by its own mean and variance) and with "
               "recalibrated running statistics (re-estimated as a plain average over `recalibrate_batches` "
               "training batches, \"precise BN\"), each minus the accuracy with the running statistics training "
               "left behind (what `val_acc` and deployment use); above zero, the running estimate costs accuracy."),
    "gradients": ("Gradients and effective learning rate", "Recorded every `hist_every_steps` steps for the "
                  "conv/linear weight W before the last norm site: lr/‖W‖² (BN makes the layer's output "
                  "independent of the scale of W, so this is its effective step size: van Laarhoven 2017, Hoffer "
                  "et al. 2018), ‖∂L/∂W‖ (both on log scales) and ‖W‖; mean over seeds with ±1 std band. Every "
                  "site's values are in metrics.jsonl (`kind: grad`) and TensorBoard (`effective_lr/<site>`, "
                  "`grad_norm/<site>`, ...)."),
    "batch_size": ("Batch size", "Final validation accuracy, and the gap between validation with batch and with "
                   "running statistics, against the batch size (log scale): mean ± std over seeds per setting."),
    "search_objective": ("Objective vs searched parameters", "The search's objective (the sweep's `--metric`) "
                         "of every finished trial against each parameter Optuna searched; colour = trial number "
                         "(where the sampler went over time), the star the best trial."),
    "search_history": ("Search history", "Each trial's objective in the order the trials ran, and the best value "
                       "found so far (a step line): whether more trials still help."),
    **SCIENCE_CAPTIONS,
}


# Keys "What ran" states, in this order (from each run's config.yaml)
RAN_KEYS = ("model.name", "model.hidden_sizes", "model.channels", "model.depth", "model.activation", "norm.kind",
            "norm.ghost_batch_size", "norm.sync", "dataset.name", "dataset.path", "dataset.limit_train",
            "dataset.limit_val", "optimizer.name", "optimizer.lr", "optimizer.momentum", "batch_size", "epochs",
            "max_steps")


def what_ran(runs: list[RunData]) -> str:
    """One sentence read from the runs' own configs and records (never from a preset's prose): the
    settings they share, those that vary, and how long they actually trained."""
    shared, varying = [], []
    for key in RAN_KEYS:
        values = {repr(r.config.get(key)) for r in runs if key in r.config}
        if not values:
            continue
        if len(values) == 1 and all(key in r.config for r in runs):
            value = next(r.config[key] for r in runs)
            if not (value is None or value is False or value in ("", [], "[]")):
                shared.append(f"`{key}={value}`")
        else:
            varying.append(f"`{key}`")
    trained = []
    for name in ("epoch", "step"):
        done = sorted({v for v in (_final(r, name) for r in runs) if isinstance(v, int)})
        if done:
            trained.append(f"{done[0]}" + (f"–{done[-1]}" if done[-1] != done[0] else "") + f" {name}s")
    text = "What ran (from the runs' config.yaml and run.json): " + (", ".join(shared) or "—")
    if varying:
        text += "; varying: " + ", ".join(varying)
    if trained:
        text += "; trained " + " / ".join(trained)
    return text + "."


# Overrides that leave a preset's description true: which norm, the seed, and where/how a run is recorded
KEEPS_DESCRIPTION = ("experiment", "norm", "seed")


def preset_lines(runs: list[RunData]) -> list[str]:
    """A preset's description, quoted only when no run overrode what it describes (its epochs,
    dataset, model...); otherwise the preset is named with the overrides that make its prose wrong."""
    from bnexp.core.keys import override_key
    from bnexp.core.vocab import is_plumbing

    descriptions = sorted({str(r.config.get("description") or "").strip() for r in runs} - {""})
    if len(descriptions) != 1:
        return []
    presets = sorted({str(r.summary.get("experiment")) for r in runs if r.summary.get("experiment")})
    name = f"`experiment={presets[0]}`" if len(presets) == 1 else "the preset"
    changed = list(dict.fromkeys(o for r in runs for o in r.overrides
                                 if override_key(o).lstrip("+~") not in KEEPS_DESCRIPTION
                                 and not is_plumbing(override_key(o).lstrip("+~"))))
    if not changed:
        return ["", f"Description of {name}:", "", f"> {descriptions[0]}"]
    shown = ", ".join(f"`{o}`" for o in changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    return ["", f"The description of {name} is not quoted: these runs override what it describes ({shown}); "
                "what actually ran is stated above."]


def render_markdown(runs: list[RunData], cells: list[Cell], keys: list[str], out_dir: Path,
                    figures: dict[str, Path], title: Optional[str], sources: Optional[list[str]]) -> str:
    best = [r for r in (_final(run, "best_val_acc") for run in runs) if isinstance(r, (int, float))]
    target = CONVERGED_FRACTION * max(best) if best else None
    lines = [f"# {title or 'bnexp report'}", ""]
    lines.append(f"{len(runs)} run(s) in {len(cells)} cell(s)"
                 + (f" from {', '.join(f'`{s}`' for s in sources)}" if sources else "")
                 + f", written {time.strftime('%Y-%m-%d %H:%M')}.")
    if keys:
        lines += ["", "Settings that differ between cells: " + ", ".join(f"`{k}`" for k in keys) + "."]
    lines += ["", what_ran(runs)]
    lines += preset_lines(runs)
    lines += ["", "## Labels", "", "A *cell* is the runs that differ only by `seed`; figures draw one line per cell "
              "(mean over seeds, ±1 std band) and name it by the settings that differ between cells.", "",
              _markdown_table(labels_table(cells, keys))]
    if len(label_keys(cells, keys)) < len(keys):
        lines += ["", "Labels name the fewest settings that tell the cells apart; *settings* lists every setting "
                  "that differs."]
    lines += ["", "## Final metrics", "", _markdown_table(metrics_table(runs, target))]
    if target is not None:
        lines += ["", f"*epochs to target*: first epoch whose validation accuracy reached {target:.4f} "
                      f"({CONVERGED_FRACTION:.0%} of the best validation accuracy among these runs); "
                      "fewer means faster convergence. *val acc @1*: after the first epoch."]
    lines += ["", "## Seed statistics", ""]
    if any(c.n > 1 for c in cells):
        lines += ["Final metrics per cell: mean ± sample standard deviation (number of seeds).", "",
                  _markdown_table(seed_table(cells))]
        compared = welch_table(cells, keys)
        if compared:
            lines += ["", "Cells that differ in one setting, compared by Welch's t-test on the final validation "
                      "accuracy (two-sided, unequal variances; *larger than seed noise* at p < 0.05):", "",
                      _markdown_table(compared)]
    else:
        lines.append("Each configuration ran with one seed, so differences cannot be told from seed noise; "
                     "repeat the runs with more seeds (e.g. `bnexp sweep ... seed=0,1,2`).")
    with_gap = gap_cells(cells)
    if with_gap:
        lines += ["", "## Train/eval gap and recalibration", "",
                  "Final validation accuracy of the BN runs scored with the running statistics training left "
                  "(`val_acc`), with each evaluation batch's own statistics (`val_acc_batch_stats`) and with "
                  "running statistics recomputed over `recalibrate_batches` training batches "
                  "(`val_acc_recalibrated`); *recalibrated − running* is taken run by run.", "",
                  _markdown_table(gap_table(with_gap))]
    probes = science_table(cells)
    if probes:
        lines += ["", "## BN-science probes", "",
                  "Each probe's mean over a run (over norm sites and measurements), then mean ± std (n) over the "
                  "seeds of each cell; definitions in docs/bn-science.md.", "", _markdown_table(probes)]
    pairs = agreement(runs)
    if pairs:
        lines += ["", "## Custom vs builtin batch norm", "",
                  "Pairs of runs whose settings differ only in the norm implementation. *Epochs agreeing*: "
                  "leading epochs before the first one where their validation accuracies differ by more than "
                  f"{AGREE_ACC}; float rounding differences grow over long runs, so curves can part late.", "",
                  _markdown_table(pairs)]
    for name, path in figures.items():
        heading, caption = CAPTIONS[name]
        lines += ["", f"## {heading}", "", f"![{name}]({_rel(path, out_dir)})", "", caption]
    lines += ["", "## Runs", ""]
    for run in runs:
        overrides = " ".join(run.overrides) or "(none)"
        lines.append(f"- `{run.id}` ({run.label}): [{_rel(run.path, out_dir)}]({_rel(run.path, out_dir)}); "
                     f"overrides: `{overrides}`")
    return "\n".join(lines) + "\n"
