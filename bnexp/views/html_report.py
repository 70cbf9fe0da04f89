"""``report.html``: one self-contained page (no network: the script, styles, data and figures are
inlined; a Content-Security-Policy forbids any request) with

- parallel coordinates: one axis per swept parameter and per final metric, one line per run;
  dragging along an axis brushes a range and filters the lines (and the curves' cells);
- interactive curves: validation accuracy/loss and training loss per epoch, mean ± std band per
  cell (runs that differ only by seed), line styles and markers per cell, legend toggles;
- the seed-statistics and Welch tables of ``report.md``, and the BN figures as embedded PNGs.

Torch-free; the script is plain JavaScript in ``html_report.js`` next to this module.
"""

from __future__ import annotations

import base64
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Optional

CURVE_METRICS = (("val_acc", "validation accuracy"), ("val_loss", "validation loss"),
                 ("train_loss", "training loss (epoch mean)"))
FINAL_METRICS = ("best_val_acc", "val_acc", "val_loss")
DASHES = {"-": "", "--": "7 4", ":": "2 3", "-.": "8 3 2 3"}
MARKERS = ("circle", "square", "triangle", "diamond", "cross")
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _json_value(value: Any) -> Any:
    """Config values as JSON keeps them: numbers, strings, booleans; anything else as text."""
    if value is None or isinstance(value, (bool, str)) or _number(value) is not None:
        return value
    return str(value)


def page_data(cells: list, keys: list[str]) -> dict:
    """What the script draws: the axes (swept keys, then final metrics), runs and cells' curves."""
    from bnexp.views.report.figures import epoch_series
    from bnexp.views.stats import SEED_KEY

    metrics = [m for m in FINAL_METRICS if any(_number(r.metrics.get(m)) is not None for c in cells for r in c.runs)]
    seeds = {repr(r.config.get(SEED_KEY)) for c in cells for r in c.runs}
    keys = [*keys, *([SEED_KEY] if len(seeds) > 1 and SEED_KEY not in keys else [])]  # seeds are swept too
    runs, cell_data = [], []
    for index, cell in enumerate(cells):
        for run in cell.runs:
            runs.append({"id": run.id, "cell": index,
                         "params": {k: _json_value(run.config.get(k)) for k in keys},
                         "metrics": {m: _number(run.metrics.get(m)) for m in metrics}})
        curves = {}
        for key, _ in CURVE_METRICS:
            series = epoch_series(cell, key)
            if series.x:
                curves[key] = {"x": series.x, "mean": series.mean, "std": series.std, "n": series.n}
        cell_data.append({"label": cell.label, "color": cell.color, "dash": DASHES.get(cell.style, ""),
                          "marker": MARKERS[index % len(MARKERS)], "curves": curves})
    return {"axes": [*keys, *metrics], "params": keys, "metrics": metrics, "runs": runs, "cells": cell_data,
            "curveTitles": dict(CURVE_METRICS)}


def table_html(rows: list[dict[str, str]], caption: str) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v).replace('`', ''))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(name: str, path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure id="figure-{html.escape(name)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def render_html(cells: list, keys: list[str], written: dict[str, Path], title: str, tables: list[tuple[str, list]],
                captions: dict[str, tuple[str, str]]) -> str:
    script = resources.files("bnexp.views").joinpath("html_report.js").read_text(encoding="utf-8")
    content = page_data(cells, keys)
    data = json.dumps(content, allow_nan=False).replace("</", "<\\/")
    figures = "".join(figure_html(name, path, captions.get(name, (name, ""))[0]) for name, path in written.items()
                      if name != "report" and Path(path).suffix == ".png")
    runs = sum(len(c.runs) for c in cells)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="lede">{runs} run{'s' * (runs != 1)} in {len(cells)} configuration{'s' * (len(cells) != 1)}
(runs that differ only by seed); varied: {html.escape(', '.join(content["params"]) or 'nothing')}.</p>
<section><h2>Parameters and final metrics</h2>
<p class="hint">One line per run. Drag along an axis to keep only runs in that range (several axes
combine); double-click an axis to clear it. <span id="pc-count"></span></p>
<div id="parcoords"></div></section>
<section><h2>Curves</h2>
<p class="hint">Mean over seeds with a ±1 std band. Click a legend entry to hide or show its configuration;
hover a plot to read the values. Configurations without a run in the brushed ranges are dimmed.</p>
<div id="legend"></div><div id="curves"></div></section>
<section><h2>Seed statistics</h2>{''.join(table_html(rows, caption) for caption, rows in tables)}</section>
<section><h2>Batch-norm figures</h2>{figures}</section>
<script id="report-data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1240px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.lede,.hint{color:#555}.hint{font-size:13px}
svg text{font-size:11px;fill:#333}
.axis line,.axis path{stroke:#888}
.pc-line{fill:none;stroke-width:1.6;opacity:.85}
.pc-line.dim{stroke:#ccc!important;opacity:.25}
.brush-area{fill:transparent;cursor:crosshair}
.brush{fill:rgba(40,110,220,.18);stroke:#2860c8;stroke-width:1}
.axis-title{font-weight:600;font-size:12px}
.band{stroke:none;opacity:.16}
.curve{fill:none;stroke-width:2}
.cell.hidden{display:none}.cell.dim{opacity:.15}
#legend span{display:inline-block;margin:2px 12px 2px 0;cursor:pointer;user-select:none}
#legend span.off{opacity:.35;text-decoration:line-through}
#legend svg{vertical-align:middle;margin-right:4px}
#curves{display:flex;flex-wrap:wrap;gap:8px}
.tip{font-size:11px}
table{border-collapse:collapse;margin:10px 0 18px;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 10px;text-align:left}th{background:#f6f6f6}
figure{margin:14px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:13px}
"""
