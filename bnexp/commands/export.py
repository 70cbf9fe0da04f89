"""``bnexp export RUN... --format csv|json``: full histories out of bnexp, for pandas, R or a paper.

CSV: one row per record of ``metrics.jsonl`` (per-step training logs, per-epoch records, and with
``--kind`` the BN diagnostics), the run id first, nested values flattened (``input.p15``). JSON: a
list of runs, each with its id, status, final metrics and one list per kind. To stdout, or with
``--out`` to a file written atomically (a reader never sees half of it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import (
    examples,
    output_dir_option,
    output_root,
    refs_argument,
    select_run_dirs,
    where_option,
)
from bnexp.core.errors import BnexpError

FORMATS = ("csv", "json")


def export_csv(runs: list[tuple[str, dict[str, list[dict]]]]) -> str:
    """One row per record, columns in first-seen order after ``run``."""
    import csv

    from bnexp.core.keys import flatten

    rows = [{"run": run_id, **flatten(record)} for run_id, history in runs for records in history.values()
            for record in records]
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["run", "kind"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def export(
    refs: Optional[List[str]] = refs_argument("Runs and/or sweeps (a sweep stands for all its jobs); none: every "
                                              "run --where selects.", False),
    where: Optional[str] = where_option(),
    fmt: str = typer.Option("csv", "--format", "-f", help="csv (one row per record) or json (one object per run)."),
    kind: Optional[List[str]] = typer.Option(None, "--kind", help="Which records: train (per logged step), "
                                             "epoch, activation, grad (BN diagnostics); repeatable. Default: train "
                                             "and epoch."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file (atomically; a link you name is followed, the file's permissions kept; - is stdout) instead of stdout."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Export runs' full per-step and per-epoch histories (from metrics.jsonl) as CSV or JSON."""
    import json

    from bnexp.store.history import KINDS, read_history
    from bnexp.store.registry import load_record
    from bnexp.store.safeio import UnsafeFile, write_user_file

    if fmt not in FORMATS:
        raise BnexpError(f"--format {fmt}: valid formats are {', '.join(FORMATS)}")
    kinds = list(dict.fromkeys(kind or ["train", "epoch"]))
    for k in kinds:
        if k not in KINDS:
            raise BnexpError(f"--kind {k}: valid kinds are {', '.join(KINDS)}")
    if out is not None and str(out) == "-":
        out = None
    if out is not None and not out.expanduser().parent.is_dir():
        raise BnexpError(f"--out {out}: the folder {out.expanduser().parent} does not exist")
    run_dirs = select_run_dirs(refs, where, output_root(output_dir))
    histories = [(d.name, read_history(d, kinds)) for d in run_dirs]  # every run read before anything is written
    if fmt == "csv":
        text = export_csv(histories)
    else:
        records = [load_record(d) for d in run_dirs]
        text = json.dumps([{"id": r.id, "dir": str(d), "status": r.status, "metrics": r.metrics, **history}
                           for r, d, (_, history) in zip(records, run_dirs, histories)], indent=1) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        write_user_file(out, text)
    except UnsafeFile as exc:
        raise BnexpError(f"--out {exc}") from None
    except OSError as exc:
        raise BnexpError(f"--out {out}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {sum(len(r) for _, h in histories for r in h.values())} records of {len(run_dirs)} "
               f"run(s) to {out}", err=True)


def register(app: typer.Typer) -> None:
    add(app, "export", export, epilog=examples("bnexp export noted > noted.csv",
                                               "bnexp export 20261122-120000-sweep-eeee --format json --out sweep.json",
                                               "bnexp export noted --kind activation --kind grad"))
