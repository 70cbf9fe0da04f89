"""``bnexp report``: figures and a Markdown page that show what batch norm did in a set of runs.

Everything is read from the runs' own files (``run.json``, ``config.yaml``, ``overrides.yaml``,
``metrics.jsonl``, ``norm_params.json``); a run without ``metrics.jsonl`` falls back to its
TensorBoard events, read with tensorboard's own ``EventAccumulator``. Figures are drawn on
matplotlib's Agg canvas (no display, no pyplot state) at fixed sizes:

    curves.png        validation accuracy / loss per epoch and training loss per step, one line per run
    activations.png   15/50/85th percentile bands of the last norm site's unit 0 (the activation's
                      input) over training, one panel per norm, as in Ioffe & Szegedy (2015) Fig. 1(b, c);
                      below, the same bands over all units of every norm site
    norm_params.png   gamma and beta per norm site at the end of training (box plots per run)
    report.md         the figures, the table of final metrics, custom-vs-builtin agreement

Only this module imports matplotlib; it is imported lazily by the command.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from bnexp.errors import BnexpError
from bnexp.registry import default_root
from bnexp.runs import (CONFIG_FILE, NORM_PARAMS_FILE, OVERRIDES_FILE, RUN_FILE, UnreadableFile, expand,
                        read_json_object, read_record, read_text, read_yaml_mapping, resolve_all, write_atomic)
from bnexp.vocab import fmt_number, is_plumbing

NORM_ORDER = ("none", "custom", "builtin")
NORM_COLORS = {"none": "#7f7f7f", "custom": "#ff7f0e", "builtin": "#1f77b4"}
NORM_TITLES = {"none": "without BN (norm=none)", "custom": "with BN (norm=custom)", "builtin": "with BN (norm=builtin)"}
OTHER_COLOR = "#2ca02c"
LINESTYLES = ("-", "--", ":", "-.")
DPI = 100
# (width, height) in inches; at DPI these give the pixel sizes below, whatever the number of runs.
FIGSIZES = {"curves": (15.0, 4.5), "activations": (15.0, 8.0), "norm_params": (15.0, 4.5)}
FIGURE_PIXELS = {name: (round(w * DPI), round(h * DPI)) for name, (w, h) in FIGSIZES.items()}
# custom and builtin "agree" at an epoch when their validation accuracies differ by at most this
AGREE_ACC = 0.001
# Share of the best validation accuracy among the runs that counts as "converged" in the table.
CONVERGED_FRACTION = 0.98


@dataclass
class RunData:
    """Everything the report needs from one run directory."""

    path: Path
    summary: dict
    config: dict  # flattened: {"optimizer.lr": 0.1, ...}
    overrides: list[str]
    train: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    activations: list[dict] = field(default_factory=list)
    norm_params: dict = field(default_factory=dict)
    label: str = ""
    style: str = "-"

    @property
    def id(self) -> str:
        return str(self.summary.get("id") or self.path.name)

    @property
    def norm(self) -> str:
        return str(self.config.get("norm.kind", self.summary.get("norm", "?")))

    @property
    def color(self) -> str:
        return NORM_COLORS.get(self.norm, OTHER_COLOR)

    @property
    def metrics(self) -> dict:
        return self.summary.get("metrics") or {}

    def last_site(self) -> Optional[str]:
        sites = _sites(self.activations)
        return sites[-1] if sites else None


# --- collecting runs ------------------------------------------------------------------------------


def collect_run_dirs(targets: Iterable[str], root: Optional[Path] = None) -> list[Path]:
    """Run directories from run dirs, sweep (or any) dirs holding runs, and run or sweep ids,
    prefixes or names (looked up under ``root``, by default ``$BNEXP_OUTPUT_DIR`` or ``outputs``)."""
    targets = list(targets)
    if not targets:
        raise BnexpError("no runs given: name run directories, sweep directories or run id prefixes")
    return expand(targets, Path(root) if root is not None else default_root())


def load_run(path: Path) -> RunData:
    """Read one run; missing optional files leave the corresponding parts empty. A run whose
    run.json cannot be read raises :class:`UnreadableFile` (the report skips it and says why)."""
    from bnexp.config import flatten

    record = read_record(path)
    summary = record.to_json()
    config: dict = {}
    overrides = list(record.overrides)
    try:  # both optional: run.json names the model, norm and dataset too
        if (path / CONFIG_FILE).exists():
            config = flatten(read_yaml_mapping(path / CONFIG_FILE))
        if not overrides and (path / OVERRIDES_FILE).exists():
            import yaml

            overrides = list(yaml.safe_load(read_text(path / OVERRIDES_FILE)) or [])
    except (UnreadableFile, ValueError, TypeError):
        pass
    run = RunData(path=path, summary=summary, config=config, overrides=[str(o) for o in overrides])
    metrics_file = path / "metrics.jsonl"
    if metrics_file.is_file():
        for line in read_text(metrics_file, limit=1 << 40).splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written while we read
            if not isinstance(record, dict):
                continue
            bucket = {"train": run.train, "epoch": run.epochs, "activation": run.activations}.get(record.get("kind"))
            if bucket is not None:
                bucket.append(record)
    else:
        run.train, run.epochs = scalars_from_events(path)
    if (path / NORM_PARAMS_FILE).exists():
        try:
            run.norm_params = read_json_object(path / NORM_PARAMS_FILE)
        except UnreadableFile:
            run.norm_params = {}
    return run


def scalars_from_events(path: Path) -> tuple[list[dict], list[dict]]:
    """Train and epoch records rebuilt from TensorBoard scalars (tensorboard's reader, not ours)."""
    if not any(path.glob("events.out.tfevents.*")):
        return [], []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}

    loss, lr = series("train/loss"), series("train/lr")
    train = [{"kind": "train", "step": s, "loss": v, "lr": lr.get(s)} for s, v in sorted(loss.items())]
    val_acc, val_loss = series("val/acc"), series("val/loss")
    train_loss, train_acc = series("epoch/train_loss"), series("epoch/train_acc")
    epochs, best = [], -1.0
    for i, step in enumerate(sorted(val_acc), start=1):
        best = max(best, val_acc[step])
        epochs.append({"kind": "epoch", "epoch": i, "step": step, "val_acc": val_acc[step],
                       "val_loss": val_loss.get(step), "train_loss": train_loss.get(step),
                       "train_acc": train_acc.get(step), "best_val_acc": best})
    return train, epochs


def differing_keys(runs: list[RunData]) -> list[str]:
    """Config keys (besides the norm, which the colour shows) whose values differ between runs."""
    from bnexp.registry import differing_keys as registry_differing_keys

    return sorted(k for k in registry_differing_keys([r.config for r in runs]) if k != "norm.kind")


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith(("optimizer.", "dataset.")) else key


def label_runs(runs: list[RunData], keys: list[str]) -> None:
    """Legend labels (norm plus the differing keys) and a line style per combination of those keys."""
    styles: dict[tuple, str] = {}
    for run in runs:
        values = tuple(repr(run.config.get(k)) for k in keys)
        styles.setdefault(values, LINESTYLES[len(styles) % len(LINESTYLES)])
        run.style = styles[values]
        extra = [f"{_short(k)}={run.config.get(k)}" for k in keys]
        run.label = " ".join([run.norm] + extra)
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.label} ({run.id[-4:]})"


def _sort_key(run: RunData, keys: list[str]) -> tuple:
    norm_rank = NORM_ORDER.index(run.norm) if run.norm in NORM_ORDER else len(NORM_ORDER)
    return (tuple(repr(run.config.get(k)) for k in keys), norm_rank, run.id)


# --- figures --------------------------------------------------------------------------------------


def _figure(name: str, nrows: int = 1, ncols: int = 1, sharey: bool | str = False):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZES[name], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _save(fig, path: Path) -> Path:
    """PNG at the fixed size, reduced to a 256-colour palette (a third of the bytes, same look)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    buffer.seek(0)
    out = io.BytesIO()
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
    write_atomic(path, out.getvalue())
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555", wrap=True)


def _line_kwargs(run: RunData) -> dict:
    # builtin is drawn wide and pale under a thin custom line, so two equal curves stay both visible
    width = {"builtin": 3.2, "custom": 1.3}.get(run.norm, 1.6)
    alpha = {"builtin": 0.55}.get(run.norm, 0.95)
    return {"color": run.color, "linestyle": run.style, "linewidth": width, "alpha": alpha, "label": run.label}


def plot_curves(runs: list[RunData], path: Path) -> Path:
    """Validation accuracy and loss per epoch, training loss per step; colour = norm."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure("curves", 1, 3)
    (ax_acc, ax_loss, ax_train) = axes[0]
    for ax, key, title in ((ax_acc, "val_acc", "validation accuracy"), (ax_loss, "val_loss", "validation loss")):
        drawn = False
        for run in runs:
            points = [(e["epoch"], e[key]) for e in run.epochs if e.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) <= 25 else None, markersize=3.5, **_line_kwargs(run))
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not drawn:
            _empty(ax, "no epoch records")
    drawn, smoothed = False, 1
    for run in runs:
        points = [(t["step"], t["loss"]) for t in run.train if t.get("loss") is not None]
        if points:
            xs, ys = zip(*points)
            window = max(1, len(ys) // 60)
            smoothed = max(smoothed, window)
            ax_train.plot(xs, _moving_average(ys, window), **_line_kwargs(run))
            drawn = True
    ax_train.set_title("training loss" + (f" (moving average of {smoothed} logged windows)" if smoothed > 1 else ""))
    ax_train.set_xlabel("step")
    ax_train.grid(alpha=0.3)
    if drawn:
        ax_train.set_yscale("log")
    else:
        _empty(ax_train, "no training records")
    handles, labels = ax_acc.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_train.get_legend_handles_labels()
    if handles:
        ax_acc.legend(handles, labels, fontsize="small", loc="lower right")
    return _save(fig, path)


def _moving_average(values, window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _sites(records: list[dict]) -> list[str]:
    names = {r["site"] for r in records if "site" in r}
    return sorted(names, key=lambda s: (len(s), s))  # norm2 before norm10


def _band(records: list[dict], site: str, part: str) -> tuple[list[int], list[float], list[float], list[float]]:
    steps, lo, mid, hi = [], [], [], []
    for r in records:
        q = r.get(part) or {}
        if r.get("site") == site and all(k in q for k in ("p15", "p50", "p85")):
            steps.append(r["step"])
            lo.append(q["p15"])
            mid.append(q["p50"])
            hi.append(q["p85"])
    return steps, lo, mid, hi


def _norm_groups(runs: list[RunData]) -> list[tuple[str, list[RunData]]]:
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.norm, []).append(run)
    order = [n for n in NORM_ORDER if n in groups] + sorted(set(groups) - set(NORM_ORDER))
    return [(n, groups[n]) for n in order]


def plot_activations(runs: list[RunData], path: Path) -> Path:
    """Top row: percentile bands of unit 0 of the last norm site (the activation's input), one panel
    per norm, as in the paper's Figure 1(b, c). Bottom row: the same bands over all units, per site."""
    groups = _norm_groups(runs)
    fig, axes = _figure("activations", 2, max(1, len(groups)), sharey="row")  # same scale with and without BN
    for col, (norm, members) in enumerate(groups):
        top, bottom = axes[0][col], axes[1][col]
        drawn_top = drawn_bottom = False
        sites_seen: list[str] = []
        for i, run in enumerate(members):
            site = run.last_site()
            if site is None:
                continue
            steps, lo, mid, hi = _band(run.activations, site, "unit0")
            if steps:
                tag = "" if len(members) == 1 else f" {run.label}"
                top.fill_between(steps, lo, hi, color=run.color, alpha=0.25 if i == 0 else 0.12, linewidth=0)
                top.plot(steps, mid, color=run.color, linestyle=run.style, linewidth=1.4, label=f"50th{tag}")
                top.plot(steps, lo, color=run.color, linestyle=run.style, linewidth=0.7, alpha=0.8)
                top.plot(steps, hi, color=run.color, linestyle=run.style, linewidth=0.7, alpha=0.8,
                         label=f"15th / 85th{tag}")
                drawn_top = True
                sites_seen.append(site)
            if i == 0:  # all sites of the first run of this norm
                sites = _sites(run.activations)
                shades = _shades(len(sites))
                for site_name, shade in zip(sites, shades):
                    s, lo2, mid2, hi2 = _band(run.activations, site_name, "output")
                    if s:
                        bottom.fill_between(s, lo2, hi2, color=shade, alpha=0.18, linewidth=0)
                        bottom.plot(s, mid2, color=shade, linewidth=1.3, label=f"{site_name} (50th; 15-85 band)")
                        drawn_bottom = True
        where = f" {sorted(set(sites_seen))[0]}" if len(set(sites_seen)) == 1 else ""
        top.set_title(f"{NORM_TITLES.get(norm, f'norm={norm}')}: unit 0 of{where or ' last norm site'}")
        bottom.set_title(f"{NORM_TITLES.get(norm, f'norm={norm}')}: all units per norm site")
        for ax, drawn in ((top, drawn_top), (bottom, drawn_bottom)):
            ax.set_xlabel("step")
            ax.set_ylabel("activation input")
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize="small", loc="best")
            else:
                _empty(ax, "no activation records\n(hist_every_steps=0?)")
    if not groups:
        _empty(axes[0][0], "no runs")
        _empty(axes[1][0], "no runs")
    return _save(fig, path)


def _shades(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.75 * i / max(n - 1, 1)) for i in range(n)]


def plot_norm_params(runs: list[RunData], path: Path) -> Path:
    """Gamma and beta per norm site at the end of training: one box per run and site."""
    fig, axes = _figure("norm_params", 1, 2)
    with_params = [r for r in runs if any(p.get("gamma") for p in r.norm_params.values())]
    for ax, name in zip(axes[0], ("gamma", "beta")):
        ax.set_title(f"{name} per norm site at the end of training")
        ax.grid(alpha=0.3, axis="y")
        if not with_params:
            _empty(ax, "no BN parameters in these runs (norm=none, or norm_params.json missing)")
            continue
        sites = sorted({s for r in with_params for s, p in r.norm_params.items() if p.get(name)},
                       key=lambda s: (len(s), s))
        width = 0.8 / len(with_params)
        for j, run in enumerate(with_params):
            data, positions = [], []
            for i, site in enumerate(sites):
                values = run.norm_params.get(site, {}).get(name)
                if values:
                    data.append(values)
                    positions.append(i - 0.4 + width * (j + 0.5))
            if not data:
                continue
            parts = ax.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True,
                               showfliers=True, flierprops={"markersize": 2, "alpha": 0.5})
            for box in parts["boxes"]:
                box.set(facecolor=run.color, alpha=0.55, linestyle=run.style)
            for median in parts["medians"]:
                median.set(color="black")
            ax.plot([], [], color=run.color, linewidth=6, alpha=0.55, label=run.label)
        ax.set_xticks(range(len(sites)), sites)
        ax.set_xlim(-0.6, len(sites) - 0.4)
        ax.axhline(1.0 if name == "gamma" else 0.0, color="#999999", linewidth=0.8, linestyle=":")
        ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


# --- tables ---------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """Report tables: vocab's number format, an em dash for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return fmt_number(value)


def _delta(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return "0 (identical)" if value == 0 else f"{value:.1e}"


def _epochs_to(run: RunData, target: float) -> Optional[int]:
    for e in run.epochs:
        if (e.get("val_acc") or 0) >= target:
            return e["epoch"]
    return None


def _final(run: RunData, key: str) -> Any:
    if key in run.metrics:
        return run.metrics[key]
    return run.epochs[-1].get(key) if run.epochs else None


def metrics_table(runs: list[RunData], keys: list[str], target: Optional[float]) -> list[dict[str, str]]:
    """One row per run: identity, differing settings and final metrics, all as strings."""
    rows = []
    for run in runs:
        best, best_epoch = _final(run, "best_val_acc"), _final(run, "best_epoch")
        first = run.epochs[0].get("val_acc") if run.epochs else None
        reached = _epochs_to(run, target) if target is not None else None
        rows.append({
            "run": run.id,
            "model": str(run.config.get("model.name", run.summary.get("model", "?"))),
            "norm": run.norm,
            "dataset": str(run.config.get("dataset.name", run.summary.get("dataset", "?"))),
            "settings": ", ".join(f"{_short(k)}={run.config.get(k)}" for k in keys) or "—",
            "status": str(run.summary.get("status", "?")),
            "epochs / steps": f"{_final(run, 'epoch') or len(run.epochs)} / {_final(run, 'step') or '—'}",
            "val acc @1": _fmt(first),
            "epochs to target": "—" if reached is None else str(reached),
            "final val acc": _fmt(_final(run, "val_acc")),
            "best val acc (epoch)": f"{_fmt(best)} ({best_epoch})" if best is not None else "—",
            "final val loss": _fmt(_final(run, "val_loss")),
            "train loss / acc": f"{_fmt(_final(run, 'train_loss'))} / {_fmt(_final(run, 'train_acc'))}",
            "time": f"{run.summary['duration_s']:.0f} s" if run.summary.get("duration_s") else "—",
        })
    return rows


def agreement(runs: list[RunData]) -> list[dict[str, str]]:
    """For each custom/builtin pair with otherwise equal settings: how far apart their curves are."""
    def key_of(run: RunData) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in run.config.items()
                            if not k.startswith("norm.") and not is_plumbing(k)))

    rows = []
    by_key: dict[tuple, dict[str, RunData]] = {}
    for run in runs:
        by_key.setdefault(key_of(run), {}).setdefault(run.norm, run)
    for pair in by_key.values():
        if "custom" not in pair or "builtin" not in pair:
            continue
        c, b = pair["custom"], pair["builtin"]
        acc_c = {e["epoch"]: e.get("val_acc") for e in c.epochs}
        acc_b = {e["epoch"]: e.get("val_acc") for e in b.epochs}
        common = [e for e in acc_c if e in acc_b and acc_c[e] is not None and acc_b[e] is not None]
        loss_c = {t["step"]: t.get("loss") for t in c.train}
        loss_b = {t["step"]: t.get("loss") for t in b.train}
        steps = [s for s in loss_c if s in loss_b and loss_c[s] is not None and loss_b[s] is not None]
        deltas = [abs(acc_c[e] - acc_b[e]) for e in sorted(common)]
        max_acc = max(deltas, default=None)
        agree = next((i for i, d in enumerate(deltas) if d > AGREE_ACC), len(deltas))
        max_loss = max((abs(loss_c[s] - loss_b[s]) for s in steps), default=None)
        fa, fb = _final(c, "val_acc"), _final(b, "val_acc")
        la, lb = _final(c, "val_loss"), _final(b, "val_loss")
        rows.append({
            "custom run": c.id, "builtin run": b.id,
            "final val acc (custom / builtin)": f"{_fmt(fa)} / {_fmt(fb)}",
            "final val loss (custom / builtin)": f"{_fmt(la)} / {_fmt(lb)}",
            f"epochs agreeing (Δ val acc ≤ {AGREE_ACC})": f"{agree} of {len(deltas)}" if deltas else "—",
            "max abs Δ val acc over epochs": _delta(max_acc),
            "max abs Δ logged train loss": _delta(max_loss),
        })
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row[h]).replace("|", "\\|") for h in head) + " |")
    return "\n".join(lines)


# --- the report -----------------------------------------------------------------------------------


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
                 sources: Optional[list[str]] = None, skipped: Optional[list[str]] = None) -> dict[str, Path]:
    """Write the figures and ``report.md`` into ``out_dir``; returns ``{name: path}``. Runs whose
    record cannot be read are left out, each with its reason appended to ``skipped``."""
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
    keys = differing_keys(runs)
    runs.sort(key=lambda r: _sort_key(r, keys))
    label_runs(runs, keys)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnexpError(f"cannot create the report directory {out_dir}: {exc.strerror}") from exc
    written = {
        "curves": plot_curves(runs, out_dir / "curves.png"),
        "activations": plot_activations(runs, out_dir / "activations.png"),
        "norm_params": plot_norm_params(runs, out_dir / "norm_params.png"),
    }
    report = out_dir / "report.md"
    write_atomic(report, render_markdown(runs, keys, out_dir, written, title, sources))
    written["report"] = report
    return written


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


def render_markdown(runs: list[RunData], keys: list[str], out_dir: Path, figures: dict[str, Path],
                    title: Optional[str], sources: Optional[list[str]]) -> str:
    best = [r for r in (_final(run, "best_val_acc") for run in runs) if isinstance(r, (int, float))]
    target = CONVERGED_FRACTION * max(best) if best else None
    first = runs[0]
    common = {k: first.config.get(k) for k in ("model.name", "dataset.name", "optimizer.name", "optimizer.lr",
                                               "batch_size", "epochs", "max_steps", "seed")
              if k in first.config and k not in keys}
    lines = [f"# {title or 'bnexp report'}", ""]
    lines.append(f"{len(runs)} run(s)" + (f" from {', '.join(f'`{s}`' for s in sources)}" if sources else "")
                 + f", written {time.strftime('%Y-%m-%d %H:%M')}.")
    if common:
        lines += ["", "Shared settings: " + ", ".join(f"`{k}={v}`" for k, v in common.items()) + "."]
    if keys:
        lines += ["", "Settings that differ besides the norm: " + ", ".join(f"`{k}`" for k in keys) + "."]
    descriptions = sorted({str(r.config.get("description") or "").strip() for r in runs} - {""})
    if len(descriptions) == 1:
        lines += ["", f"> {descriptions[0]}"]
    lines += ["", "## Final metrics", ""]
    lines.append(_markdown_table(metrics_table(runs, keys, target)))
    if target is not None:
        lines += ["", f"*epochs to target*: first epoch whose validation accuracy reached {target:.4f} "
                      f"({CONVERGED_FRACTION:.0%} of the best validation accuracy among these runs); "
                      "fewer means faster convergence. *val acc @1*: after the first epoch."]
    pairs = agreement(runs)
    if pairs:
        lines += ["", "## Custom vs builtin batch norm", "",
                  "Pairs of runs whose settings differ only in the norm implementation. *Epochs agreeing*: "
                  "leading epochs before the first one where their validation accuracies differ by more than "
                  f"{AGREE_ACC}; float rounding differences grow over long runs, so curves can part late.", "",
                  _markdown_table(pairs)]
    captions = {
        "curves": ("Training curves", "Validation accuracy and loss after each epoch, and training loss per "
                   "logged window; colour = norm (grey none, orange custom, blue builtin; builtin drawn wide "
                   "and pale under custom, so equal curves show as one line with a halo)."),
        "activations": ("Activation distribution over training", "Top: the 15th, 50th and 85th percentiles "
                        "of unit 0 of the last norm site's output (the input of its activation, e.g. the "
                        "sigmoid), recorded every `hist_every_steps` steps — without BN vs with BN, as in "
                        "Ioffe & Szegedy (2015) Figure 1(b, c). Bottom: the same percentiles over all units of "
                        "every norm site."),
        "norm_params": ("BN parameters at the end", "Distribution of gamma (scale) and beta (shift) over the "
                        "units/channels of each norm site; norm=none runs have none."),
    }
    for name, path in figures.items():
        heading, caption = captions[name]
        lines += ["", f"## {heading}", "", f"![{name}]({_rel(path, out_dir)})", "", caption]
    lines += ["", "## Runs", ""]
    for run in runs:
        overrides = " ".join(run.overrides) or "(none)"
        lines.append(f"- `{run.id}` ({run.label}): [{_rel(run.path, out_dir)}]({_rel(run.path, out_dir)}); "
                     f"overrides: `{overrides}`")
    return "\n".join(lines) + "\n"
