"""The ``bnexp`` command: a Typer app whose sub-commands live in ``bnexp.commands``.

Nothing heavy (torch, tensorboard, hydra) is imported here: each command imports what it needs
when it runs, so ``bnexp --help`` returns at once. Every way a command can fail on bad input
(a usage error, a bad value found while working) ends as one ``error:`` line and a non-zero exit.
"""

from __future__ import annotations

import errno
import importlib
import os
import pkgutil
import sys
from typing import Optional

import typer

from bnexp import __version__
from bnexp.core.errors import BnexpError, describe_error, error_line

# Commands appear in ``--help`` in this order (by module); modules not listed follow alphabetically.
COMMAND_ORDER = ["train", "sweep", "runs", "show", "curves", "compare", "export", "tag", "rm", "tensorboard",
                 "report", "check_bn"]

# Which module registers each command, so that running one imports only its module (a test checks
# this table against what the modules register; a command missing here still works, less lazily).
COMMAND_MODULES = {"train": "train", "sweep": "sweep", "runs": "runs", "show": "show", "curves": "curves",
                   "compare": "compare", "export": "export", "tag": "tag", "note": "tag", "rm": "rm",
                   "restore": "rm", "tensorboard": "tensorboard", "report": "report", "check-bn": "check_bn",
                   "recalibrate": "recalibrate", "import": "import_runs", "watch": "watch"}
ROOT_FLAGS = ("--debug",)  # root options that come before the command name and take no value

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


def _register_commands(args: Optional[list[str]] = None) -> None:
    """Add the commands to the app: only the module of the command being run when ``args`` name one
    in :data:`COMMAND_MODULES` (start-up then imports nothing else), every module otherwise (help,
    an unknown command). Once per process for the full set (tests call main() often)."""
    import bnexp.commands as commands

    name = _command_name(args) if args is not None else None
    if name in COMMAND_MODULES:
        module = importlib.import_module(f"bnexp.commands.{COMMAND_MODULES[name]}")
        registered = {c.callback.__module__ for c in app.registered_commands if c.callback is not None}
        if module.__name__ not in registered:
            module.register(app)
        return
    registered = {c.callback.__module__ for c in app.registered_commands if c.callback is not None}
    found = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    ordered = [n for n in COMMAND_ORDER if n in found] + sorted(set(found) - set(COMMAND_ORDER))
    for module_name in ordered:
        module = importlib.import_module(f"bnexp.commands.{module_name}")
        if module.__name__ not in registered:
            module.register(app)
    order = {f"bnexp.commands.{n}": i for i, n in enumerate(ordered)}  # --help lists them in this order
    app.registered_commands.sort(key=lambda c: order.get(getattr(c.callback, "__module__", ""), len(order)))


def _command_name(args: list[str]) -> Optional[str]:
    """The command ``args`` run (the first word after the root flags), or None for help/version."""
    for arg in args:
        if arg in ROOT_FLAGS:
            continue
        return None if arg.startswith("-") else arg
    return None


def _wants_help(args: list[str]) -> bool:
    return not args or any(a in ("-h", "--help") for a in args) or _command_name(args) not in COMMAND_MODULES


def _polish_help(command) -> None:
    """What ``--help`` shows: flags without a ``<bool>`` placeholder (they take no value), and
    epilog lines (examples, config groups) that wrap with a hanging indent instead of flush-left."""
    from types import SimpleNamespace

    from rich.console import Console
    from typer import rich_utils

    width = Console(width=rich_utils.MAX_WIDTH).width - 2  # typer pads the epilog by one column each side
    names = SimpleNamespace(help_option_names=command.context_settings.get("help_option_names", ["--help"]))
    for sub in [command, *getattr(command, "commands", {}).values()]:
        help_option = sub.get_help_option(names)  # made now (and kept) so that it is polished too
        for param in [*sub.params, *([help_option] if help_option else [])]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        if sub.epilog:
            sub.epilog = hanging_indents(sub.epilog, width)


def hanging_indents(text: str, width: int) -> str:
    """Wrap each line of Rich-markup ``text`` to ``width``; continuation lines start under the text
    after the line's ``label: `` (or at its indent plus two), so examples stay readable when narrow."""
    import re

    from rich.markup import escape
    from rich.text import Text

    from bnexp.views.terminal import wrap_text

    out = []
    for line in text.split("\n"):
        styled = Text.from_markup(line)
        plain = styled.plain
        if len(plain) <= width:
            out.append(line)
            continue
        label = re.match(r"\s*[^\s:]+(?: [^\s:]+)*: ", plain[:40])
        start = len(label.group(0)) if label else len(plain) - len(plain.lstrip())
        indent = start if label else start + 2
        pieces = [escape(piece) for piece in wrap_text(plain[start:], max(width - indent, 20))]
        out.append(styled[:start].markup + pieces[0])
        out += [" " * indent + piece for piece in pieces[1:]]
    if len(out) > 1 and all(line[:1] == " " for line in out[1:]):
        # typer dedents an epilog's lines after the first (inspect.cleandoc) by their common indent:
        # put the first example on a line of its own, under its label, so that every example is
        # dedented alike and they stay lined up (no invisible characters a copied command would carry)
        head, sep, first = out[0].partition(": ")
        if sep:
            out[:1] = [head + ":", " " * len(head + sep) + first]
    return "\n".join(out)


def _debug() -> bool:
    return os.environ.get("BNEXP_DEBUG", "") not in ("", "0") or "--debug" in sys.argv


def main() -> None:
    """Console-script entry point: run the app, turning every failure into one line and an exit code.

    Click's usage errors (unknown option, missing argument; typer vendors click, so they are
    recognised by their interface) and bnexp's own :class:`BnexpError` print ``error: ...``;
    Ctrl-C exits 130; a genuine crash prints its type and message (the traceback with ``--debug``).
    """
    args = sys.argv[1:]
    _register_commands(args)
    command = typer.main.get_command(app)
    if _wants_help(args):  # building the polished help costs ~0.1 s: only when it may be printed
        _polish_help(command)
    try:
        code = command(standalone_mode=False, prog_name="bnexp")  # the exit code is returned, not raised
    except BnexpError as exc:
        if _debug():
            raise
        error_line(str(exc), exc.prefix)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error_line("stopped", prefix="interrupted")
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's UsageError & co.
            context = getattr(exc, "ctx", None)
            where = context.command_path if context is not None else "bnexp"
            error_line(f"{exc.format_message()} (see: {where} --help)")
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # a prompt closed with Ctrl-D / Ctrl-C
            error_line("aborted", prefix="interrupted")
            sys.exit(1)
        if _debug():
            raise
        if isinstance(exc, OSError) and exc.filename:  # a full disk, a folder not writable: name the file
            error_line(describe_error(exc) if exc.errno == errno.ENOSPC else f"{os.fsdecode(exc.filename)}: {exc.strerror or exc}")
            sys.exit(1)
        error_line(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
