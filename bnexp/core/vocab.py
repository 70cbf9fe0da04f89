"""The words every command shares: metric names and their direction, run statuses and their
colours, the config keys that say where or how a run ran (not what it is), and how numbers print.

Torch-free and import-light: the registry commands, the trainer and the report all read it.
"""

from __future__ import annotations

import math
from typing import Any

from bnexp.core.keys import override_key, override_value

# Final metrics a run records in run.json, in the order tables show them.
METRICS = ("best_val_acc", "val_acc", "val_loss", "train_acc", "train_loss",
           "val_acc_batch_stats", "val_loss_batch_stats", "val_acc_recalibrated", "val_loss_recalibrated")
# The ones a sweep can sort by or an Optuna search can optimize.


def higher_is_better(metric: str) -> bool:
    """Accuracies go up, losses go down."""
    return "acc" in metric


# What run.json can say; the registry adds two it derives: "dead" (status running, owner gone)
# and "unreadable" (run.json cannot be parsed).
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
DERIVED_STATUSES = ("dead", "unreadable")
STATUS_STYLE = {"completed": "green", "diverged": "yellow", "running": "cyan", "interrupted": "magenta",
                "dead": "bold red", "failed": "red", "unreadable": "red", "partial": "yellow"}
RESUMABLE = ("interrupted", "failed", "dead")

# Top-level config keys that say where or how a run ran or what it measured, not what it trained: left out of
# "key overrides", of the keys that differ between runs, of HParams and of report labels.
PLUMBING_KEYS = ("output_dir", "resume", "name", "description", "threads", "checkpoint", "log_every_steps",
                 "hist_every_steps", "log_channels", "device", "recalibrate_batches", "logger",
                 "node_rank", "rdzv_endpoint", "rdzv_timeout")


def norm_label(norm, overrides) -> str:
    """The norm as tables show it, with the settings that change what it computes: ``custom``,
    ``custom(ghost=32,sync)`` (read from the run's overrides: ghost batches and cross-process
    statistics are set there, no preset sets them)."""
    options = []
    ghost = override_value(overrides, "norm.ghost_batch_size")
    if ghost not in (None, "null", "None"):
        options.append(f"ghost={ghost}")
    if str(override_value(overrides, "norm.sync")).lower() in ("true", "1", "yes"):
        options.append("sync")
    return f"{norm}({','.join(options)})" if options else str(norm)


def is_plumbing(key: str) -> bool:
    """``optimizer.lr`` -> False; ``output_dir``, ``device.type``, ``+threads`` -> True."""
    return override_key(key).split(".", 1)[0].split("/", 1)[0] in PLUMBING_KEYS


def fmt_number(value: Any, digits: int = 4) -> str:
    """Metrics and config values for tables: 4 significant digits (``0.9531``, ``12.35``), integers
    as they are, scientific notation only for huge or tiny values (``1.91e+20``), ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.{digits - 1}e}"
    if abs(value) >= 10 ** digits:  # 12345.6 -> 12346: no exponent below a million
        return f"{value:.0f}"
    return f"{value:#.{digits}g}"  # '#' keeps trailing zeros: 0.9000 lines up with 0.9531


def fmt_seconds(value: Any) -> str:
    """``0.4 s``, ``12.3 s``, ``3 m 05 s``, ``2 h 01 m``; ``-`` when unknown."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} m {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def fmt_rate(value: Any) -> str:
    """Throughput as an integer with thousands separators: ``12,345``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:,.0f}"


def fmt_mean_std(mean: float, std: float, n: int, latex: bool = False) -> str:
    """``0.9100 ± 0.0100`` (the spread to the mean's decimals), the mean alone for one run: how every
    table and report prints seed statistics."""
    text = fmt_number(mean)
    if n < 2:
        return text
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else None
    spread_text = fmt_number(std) if decimals is None else f"{std:.{decimals}f}"
    sign = r"$\pm$" if latex else "±"
    return f"{text} {sign} {spread_text}"
