"""``bnexp check-bn``: does ``bnexp.nn.batchnorm`` still match ``torch.nn.BatchNorm*d``?

The command line around :mod:`bnexp.nn.check`, which runs the comparison (and which
``tests/test_norm.py`` asserts on). Torch and the check are imported inside :func:`check_bn`:
``bnexp --help`` must not pay for them.
"""

from __future__ import annotations

from typing import Optional

import typer

from bnexp.commands import add
from bnexp.core.errors import BnexpError


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def check_bn(
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    steps: int = typer.Option(5, "--steps", min=1, help="Steps per case (training steps, then eval steps)."),
    seed: int = typer.Option(0, "--seed", help="Seed for inputs and parameters."),
) -> None:
    """Compare bnexp's custom BatchNorm with torch.nn.BatchNorm on random inputs: every class, config and
    mode. Prints the largest relative differences; exits 1 if any exceeds the tolerance of the dtype
    (printed with the result)."""
    import torch
    from rich.console import Console

    from bnexp.nn.check import TOLERANCE, run_all
    from bnexp.views.terminal import Column, FittedTable

    if dtype not in TOLERANCE:
        raise BnexpError(f"--dtype {dtype}: valid values are {', '.join(TOLERANCE)}")
    if device not in ("cpu", "cuda"):
        raise BnexpError(f"--device {device}: valid values are cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BnexpError("--device cuda: no CUDA device is available to torch here; use --device cpu")
    results = run_all(dtype=dtype, device=device, steps=steps, seed=seed)
    # input shape and config share a column that wraps between them, never inside "ghost_batch_size=3"
    columns = [Column("layer"), Column("input, config", wrap=True), Column("mode"),
               *[Column(name, "right") for name in ("output", "grads", "stats")], Column("")]
    rows = [[r.layer, f"{'x'.join(map(str, r.shape))} {r.config}", r.mode, _fmt(r.out_diff), _fmt(r.grad_diff),
             _fmt(r.stat_diff), ("pass", "green") if r.passed else ("FAIL", "bold red")] for r in results]
    console = Console()
    console.print(FittedTable(columns, rows, title=f"bnexp.nn.batchnorm vs torch.nn, max relative difference ({dtype}, "
                                                   f"{device}, {steps} steps, seed {seed})"))
    tol = TOLERANCE[dtype]
    for r in results:
        for note in r.failures:
            console.print(f"[red]FAIL[/red] {r.layer} {r.config} {r.mode}: {note}", highlight=False)
    failed = [r for r in results if not r.passed]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(results)} cases differ from torch by more than "
                      f"{tol:g} (relative)[/bold red]")
        raise typer.Exit(1)
    console.print(f"[green]all {len(results)} cases match torch within {tol:g} (relative)[/green]")


def register(app: typer.Typer) -> None:
    add(app, "check-bn", check_bn)
