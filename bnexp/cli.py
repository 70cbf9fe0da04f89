"""The ``bnexp`` command: a Typer app whose sub-commands live in ``bnexp.commands``.

Nothing heavy (torch, tensorboard, hydra) is imported here: each command imports what it needs
when it runs, so ``bnexp --help`` returns at once. Every way a command can fail on bad input
(a usage error, a bad value found while working) ends as one ``error:`` line and a non-zero exit.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from typing import Optional

import typer

from bnexp import __version__
from bnexp.errors import BnexpError

# Commands appear in ``--help`` in this order; modules not listed follow alphabetically.
COMMAND_ORDER = ["train", "sweep", "runs", "tensorboard", "report", "check_bn"]

app = typer.Typer(
    name="bnexp",
    help="Batch-normalization experiment tracker: train, sweep, compare and inspect BN runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"bnexp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full Python tracebacks for errors (also BNEXP_DEBUG=1)."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_show_version, is_eager=True,
                                           help="Print the version and exit."),
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


def error_line(message: str, label: str = "error") -> None:
    """Print one red ``error:`` line to stderr (Rich markup in the message is not interpreted)."""
    from rich.console import Console
    from rich.text import Text

    style = "bold yellow" if label != "error" else "bold red"
    Console(stderr=True, soft_wrap=True).print(Text(f"{label}: ", style=style) + Text(" ".join(message.split())))


def main() -> None:
    """Console-script entry point: run the app, turning every failure into one line and an exit code.

    Click's usage errors (unknown option, missing argument; typer vendors click, so they are
    recognised by their interface) and bnexp's own :class:`BnexpError` print ``error: ...``;
    Ctrl-C exits 130; a genuine crash prints its type and message (the traceback with ``--debug``).
    """
    _register_commands()
    try:
        code = app(standalone_mode=False)  # click returns a command's exit code instead of exiting
    except BnexpError as exc:
        if _debug():
            raise
        error_line(str(exc), exc.label)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error_line("stopped", label="interrupted")
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's UsageError & co.
            context = getattr(exc, "ctx", None)
            where = context.command_path if context is not None else "bnexp"
            error_line(f"{exc.format_message()} (see: {where} --help)")
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # a prompt closed with Ctrl-D / Ctrl-C
            error_line("aborted", label="interrupted")
            sys.exit(1)
        if _debug():
            raise
        error_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
