"""The ``bnexp`` command: a Typer app whose sub-commands live in ``bnexp.commands``.

Nothing heavy (torch, tensorboard, hydra) is imported here: each command imports what it needs
when it runs, so ``bnexp --help`` returns at once.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from bnexp.errors import BnexpError

# Commands appear in ``--help`` in this order; modules not listed follow alphabetically.
COMMAND_ORDER = ["train", "sweep", "runs", "tensorboard", "report", "check_bn"]

app = typer.Typer(
    name="bnexp",
    help="Batch-normalization experiment tracker: train, sweep, compare and inspect BN runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show full Python tracebacks for errors (also BNEXP_DEBUG=1)."
    ),
) -> None:
    if debug:
        os.environ["BNEXP_DEBUG"] = "1"


def _register_commands() -> None:
    import bnexp.commands as commands

    found = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    ordered = [n for n in COMMAND_ORDER if n in found] + sorted(set(found) - set(COMMAND_ORDER))
    for name in ordered:
        importlib.import_module(f"bnexp.commands.{name}").register(app)


def _debug() -> bool:
    return os.environ.get("BNEXP_DEBUG", "") not in ("", "0") or "--debug" in sys.argv


def error_line(message: str) -> None:
    """Print one red ``error:`` line to stderr (Rich markup in the message is not interpreted)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text("error: ", style="bold red") + Text(message.strip()))


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages.

    Typer (standalone mode) already handles usage errors, ``--help`` and exit codes; what reaches
    here is a :class:`BnexpError` (bad input found while working) or a genuine crash.
    """
    _register_commands()
    try:
        app()
    except BnexpError as exc:
        if _debug():
            raise
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _debug():
            raise
        error_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
