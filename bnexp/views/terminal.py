"""Terminal output that fits: tables laid out for the terminal's width, and plain-text line plots.

Every table of the registry commands, the sweep table and the train summary go through
:class:`FittedTable`, which decides its layout when Rich renders it (so it fits whatever console
prints it): columns are kept by priority and width, never cut with an ellipsis; a column that may
wrap breaks between words (``optimizer.lr=0.1`` stays whole); with ``wide`` every column is
shown at its natural width. :func:`line_plot` draws curves with characters only (one marker per
series, no colour needed), so a training curve can be read over SSH at 80 columns.

Import-light: Rich only (no torch, no plotting library).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from rich.cells import cell_len, chop_cells

from bnexp.core.text import escape

GAP = 2  # spaces between columns
BREAK_AFTER = "/-_.=,:"  # a token longer than its column breaks after one of these if it can
Cell = Union[str, tuple[str, Optional[str]]]  # text, or (text, Rich style)
Line = list[tuple[str, Optional[str]]]  # a rendered line: pieces of text and their style


@dataclass
class Column:
    """``priority`` 0: always shown; higher numbers give way first on a narrow terminal.
    ``wrap``: the column may wrap between words (its narrowest width is its longest word)."""

    header: str
    justify: str = "left"
    priority: int = 0
    wrap: bool = False


def wrap_text(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` cells, broken between words; a word longer than the width breaks
    after a separator (``/``, ``-``, ``=``...) when it can, else where it must. Newlines are kept."""
    width = max(width, 1)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            if current and cell_len(current) + 1 + cell_len(word) <= width:
                current += " " + word
                continue
            if current:
                lines.append(current)
            pieces = _fold_word(word, width)
            lines += pieces[:-1]
            current = pieces[-1]
        lines.append(current)
    return lines


def _fold_word(word: str, width: int) -> list[str]:
    pieces = []
    while cell_len(word) > width:
        head = chop_cells(word, width)[0]
        cut = max((i + 1 for i, ch in enumerate(head) if ch in BREAK_AFTER), default=0)
        if cut >= len(head) // 3:  # a separator not too early in the line: break there
            head = head[:cut]
        pieces.append(head)
        word = word[len(head):]
    return pieces + [word]


def _width(text: str) -> int:
    """Cells the text takes on screen (fast for ASCII, the usual case)."""
    return len(text) if text.isascii() else cell_len(text)


def _longest_word(text: str) -> int:
    return max((_width(w) for w in text.split()), default=0)


class FittedTable:
    """A table that lays itself out for the width Rich renders it at.

    ``overflow="drop"``: columns that do not fit give way, lowest priority first (the line under
    the table names them and ``hint`` says where to see them). ``overflow="blocks"``: the first
    column is repeated and the others continue in further blocks below (for runs side by side).
    ``wide``: every column at full width, whatever the terminal (print with ``crop=False``).
    """

    def __init__(self, columns: Sequence[Column], rows: Iterable[Sequence[Cell]], *, title: Optional[str] = None,
                 row_styles: Optional[Sequence[Optional[str]]] = None, wide: bool = False,
                 overflow: str = "drop", hint: str = "--wide shows every column", show_header: bool = True):
        self.columns = list(columns)
        # every cell may hold text from a run's files: control characters are shown, never obeyed
        self.rows = [[(escape(c[0], "\n"), c[1]) if isinstance(c, tuple) else (escape(c, "\n"), None) for c in row]
                     for row in rows]
        self.row_styles = list(row_styles) if row_styles is not None else [None] * len(self.rows)
        title = escape(title) if title is not None else None
        self.title, self.wide, self.overflow, self.hint, self.show_header = title, wide, overflow, hint, show_header
        texts = [[c.header if show_header else "" for c in self.columns], *[[t for t, _ in r] for r in self.rows]]
        self.natural = [max(_width(line) for row in texts for line in row[i].split("\n"))
                        for i in range(len(self.columns))]
        self.minimum = [max(_width(c.header) if show_header else 0, max(_longest_word(row[i]) for row in texts))
                        if c.wrap else self.natural[i] for i, c in enumerate(self.columns)]

    # -- layout ------------------------------------------------------------------------------

    def layout(self, width: int) -> tuple[list[list[int]], dict[int, int], list[int]]:
        """``(blocks of visible column indices, width of each, hidden column indices)``."""
        n = len(self.columns)
        if self.wide or sum(self.natural) + GAP * (n - 1) <= width:
            return [list(range(n))], dict(enumerate(self.natural)), []
        if self.overflow == "blocks":
            blocks = self._blocks(width)
            return blocks, {i: w for block in blocks for i, w in self._shrunk(block, width, False).items()}, []
        chosen: list[int] = []
        used = -GAP
        for i in sorted(range(n), key=lambda i: (self.columns[i].priority, i)):
            if self.columns[i].priority == 0 or used + GAP + self.minimum[i] <= width:
                chosen.append(i)
                used += GAP + self.minimum[i]
        chosen.sort()
        return [chosen], self._shrunk(chosen, width, allow_wrap=True), [i for i in range(n) if i not in chosen]

    def _shrunk(self, visible: Iterable[int], width: int, allow_wrap: bool) -> dict[int, int]:
        """Widths for ``visible`` within ``width``: wrapping columns grow from their longest word
        towards their natural width; if the columns still do not fit, the widest one folds."""
        visible = list(visible)
        widths = {i: self.minimum[i] if allow_wrap else self.natural[i] for i in visible}
        spare = width - sum(widths.values()) - GAP * (len(visible) - 1)
        for i in visible:
            if allow_wrap and self.columns[i].wrap and spare > 0:
                grow = min(self.natural[i] - widths[i], spare)
                widths[i] += grow
                spare -= grow
        while spare < 0:  # even the columns that must stay do not fit: fold the widest
            widest = max(visible, key=lambda i: widths[i])
            cut = min(-spare, widths[widest] - 4)
            if cut <= 0:
                break
            widths[widest] -= cut
            spare += cut
        return widths

    def _blocks(self, width: int) -> list[list[int]]:
        blocks: list[list[int]] = []
        current, used = [0], self.natural[0]
        for i in range(1, len(self.columns)):
            if len(current) > 1 and used + GAP + self.natural[i] > width:
                blocks.append(current)
                current, used = [0], self.natural[0]
            current.append(i)
            used += GAP + self.natural[i]
        return blocks + [current]

    # -- rendering ---------------------------------------------------------------------------

    def lines(self, width: int) -> list[Line]:
        """The table as lines of ``(text, style)`` pieces (title and notes included)."""
        blocks, widths, hidden = self.layout(width)
        out: list[Line] = []
        if self.title:
            out += [[(line, "bold")] for line in (wrap_text(self.title, width) if not self.wide else [self.title])]
        for number, block in enumerate(blocks):
            if number:
                out.append([])
            if self.show_header:
                out += self._row_lines(block, widths, [(c.header, "bold") for c in self.columns], None)
                out.append([((" " * GAP).join("─" * widths[i] for i in block), "dim")])
            for row, style in zip(self.rows, self.row_styles):
                out += self._row_lines(block, widths, row, style)
        if hidden:
            names = ", ".join(self.columns[i].header for i in hidden)
            note = f"(not shown at {width} columns: {names}; {self.hint})"
            out += [[(line, "dim")] for line in wrap_text(note, width)]
        return out

    def _row_lines(self, block: list[int], widths: dict[int, int], row: Sequence[tuple[str, Optional[str]]],
                   row_style: Optional[str]) -> list[Line]:
        cells = []
        for i in block:
            text, style = row[i]
            if self.wide:
                wrapped = text.split("\n")
            elif "\n" not in text and _width(text) <= widths[i]:
                wrapped = [text]
            else:
                wrapped = [piece for line in text.split("\n") for piece in wrap_text(line, widths[i])]
            cells.append((wrapped, f"{row_style} {style}" if row_style and style else row_style or style))
        lines = []
        last = block[-1]
        for k in range(max(len(wrapped) for wrapped, _ in cells)):
            pieces: Line = []
            for i, (wrapped, style) in zip(block, cells):
                text = wrapped[k] if k < len(wrapped) else ""
                pad = " " * (widths[i] - _width(text))
                if self.columns[i].justify == "right":
                    pieces += [(pad, None), (text, style)]
                else:
                    pieces += [(text, style)] + ([(pad, None)] if i != last else [])
                if i != last:
                    pieces.append((" " * GAP, None))
            lines.append(pieces)
        return lines

    def __rich_console__(self, console, options):
        from rich.segment import Segment
        from rich.style import Style

        styles: dict[Optional[str], Optional[Style]] = {None: None}
        pending: list[str] = []  # neighbours of one style go out as one segment: thousands of rows
        pending_style: Optional[str] = None  # render in a fraction of the time
        for line in self.lines(options.max_width):
            for text, style in [*line, ("\n", None)]:
                if style != pending_style:
                    if pending:
                        yield Segment("".join(pending), styles[pending_style])
                    pending, pending_style = [], style
                    if style not in styles:
                        styles[style] = Style.parse(style)
                pending.append(text)
        if pending:
            yield Segment("".join(pending), styles[pending_style])


def key_values(rows: Iterable[tuple[str, object]], title: Optional[str] = None, wide: bool = False) -> FittedTable:
    """A two-column table of names and values (the values wrap between words; a value may be a
    ``(text, style)`` cell); None values are skipped."""
    shown = [(key, value if isinstance(value, tuple) else str(value)) for key, value in rows if value is not None]
    return FittedTable([Column("", priority=0), Column("", wrap=True)],
                       [[(k, "bold"), v] for k, v in shown], title=title, wide=wide, show_header=False)


def print_command(console, lead: str, command: str, style: Optional[str] = None) -> None:
    """``lead command`` on one line when it fits the console, else the command on a line of its
    own; a command is never folded, so it is never broken inside a word and copies in one piece."""
    from rich.text import Text

    if cell_len(lead) + 1 + cell_len(command) <= console.width:
        console.print(Text(lead, style=style or "") + Text(" " + command), soft_wrap=True)
    else:
        console.print(Text(lead, style=style or ""))
        console.print(Text("  " + command), soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# Plots made of characters

MARKERS = "*o+x@%&=$" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TRACE = "·"
OVERLAP = "#"  # two or more series at one point: no marker hides another


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[Optional[float]]


def line_plot(series: Sequence[Series], width: int, height: int = 12, *, title: str, x_label: str = "epoch",
              log: Optional[bool] = None) -> list[str]:
    """``title``, a ``height``-row plot and a legend, in lines of at most ``width`` characters.
    Each series has its own marker (``*``, ``o``, ``+``...), joined by dots, so it reads without
    colour. Non-finite values are left out; ``log`` (default: when positive values span more than
    two decades, like a loss that blew up) plots log10 of the values."""
    from bnexp.core.vocab import fmt_number

    points = [[(float(x), float(y)) for x, y in zip(s.x, s.y) if _finite(x) and _finite(y)] for s in series]
    values = [y for p in points for _, y in p]
    if not values:
        return [title, "  (no values to plot)"]
    if log is None:
        log = min(values) > 0 and max(values) / min(values) > 100
    if log:
        points = [[(x, math.log10(y)) for x, y in p if y > 0] for p in points]
        values = [y for p in points for _, y in p]
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - max(abs(low) * 0.05, 1e-3), high + max(abs(high) * 0.05, 1e-3)
    xs = [x for p in points for x, _ in p]
    x_low, x_high = min(xs), max(xs)
    ticks = [high, (high + low) / 2, low] if height < 9 else [high - (high - low) * k / 4 for k in range(5)]
    tick_rows = [round((high - t) / (high - low) * (height - 1)) for t in ticks]
    labels = [fmt_number(10 ** t if log else t) for t in ticks]
    label_width = max(len(s) for s in labels)
    plot_width = max(width - label_width - 2, 10)
    grid = [[" "] * plot_width for _ in range(height)]

    def column(x: float) -> int:
        return plot_width // 2 if x_high == x_low else round((x - x_low) / (x_high - x_low) * (plot_width - 1))

    def row(y: float) -> int:
        return round((high - y) / (high - low) * (height - 1))

    owners: dict[tuple[int, int], set[int]] = {}  # which series put a marker in each cell
    for number, p in enumerate(points):
        cells = _per_column(p, column, row)
        for (c0, r0), (c1, r1) in zip(cells, cells[1:]):  # dots between consecutive points
            for c in range(c0 + 1, c1):
                r = round(r0 + (r1 - r0) * (c - c0) / (c1 - c0))
                if grid[r][c] == " ":
                    grid[r][c] = TRACE
        for c, r in cells:
            owners.setdefault((r, c), set()).add(number)
    for (r, c), numbers in owners.items():
        grid[r][c] = OVERLAP if len(numbers) > 1 else MARKERS[min(numbers) % len(MARKERS)]
    shared = sorted({n for numbers in owners.values() if len(numbers) > 1 for n in numbers})
    lines = [title]
    for r in range(height):
        label = labels[tick_rows.index(r)] if r in tick_rows else ""
        lines.append(f"{label:>{label_width}} {'┤' if label else '│'}{''.join(grid[r])}".rstrip())
    lines.append(" " * label_width + " └" + "─" * plot_width)
    lines.append(" " * (label_width + 2) + _x_ticks(x_low, x_high, plot_width, x_label, column))
    items = [f"{MARKERS[i % len(MARKERS)]} {s.label}" for i, s in enumerate(series)]
    if shared:  # say which markers a # stands for, and which series is drawn only as # (equal curves)
        alone = {n for numbers in owners.values() if len(numbers) == 1 for n in numbers}
        covered = [MARKERS[n % len(MARKERS)] for n in shared if n not in alone]
        items.append(f"{OVERLAP} {' '.join(MARKERS[n % len(MARKERS)] for n in shared)} overlap there"
                     + (f" ({' and '.join(covered)} at every point: equal curves)" if covered else ""))
    if log:
        items.append("(log scale)")
    return lines + _packed(items, width)


def _packed(items: list[str], width: int, indent: str = "  ", gap: str = "   ") -> list[str]:
    """Legend entries side by side, as many per line as fit (one too long for a line wraps)."""
    lines: list[str] = []
    for item in items:
        if lines and cell_len(lines[-1]) + len(gap) + cell_len(item) <= width:
            lines[-1] += gap + item
        else:
            lines += [indent + piece for piece in wrap_text(item, width - len(indent))]
    return lines


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _per_column(points: list[tuple[float, float]], column, row) -> list[tuple[int, int]]:
    """Grid cells of a series; points sharing a column (more points than columns) become one, at
    their mean."""
    merged: dict[int, list[float]] = {}
    for x, y in points:
        merged.setdefault(column(x), []).append(y)
    return [(c, row(sum(v) / len(v))) for c, v in sorted(merged.items())]


def _x_ticks(low: float, high: float, width: int, label: str, column) -> str:
    """First, middle and last x values under the axis (whole numbers when the ends are), and the
    axis name."""
    from bnexp.core.vocab import fmt_number

    def text(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else fmt_number(x)

    line = [" "] * width
    middle = (low + high) / 2
    if low.is_integer() and high.is_integer():
        middle = float(round(middle))
    marks = [(column(x), text(x)) for x in dict.fromkeys((low, middle, high))]
    for position, mark in marks:
        start = min(max(position - len(mark) // 2, 0), width - len(mark))
        if all(ch == " " for ch in line[max(start - 1, 0):start + len(mark) + 1]):
            line[start:start + len(mark)] = mark
    name = f"({label})"
    start = width // 4 - len(name) // 2
    if start > 0 and all(ch == " " for ch in line[start - 1:start + len(name) + 1]):
        line[start:start + len(name)] = name
    return "".join(line).rstrip()
