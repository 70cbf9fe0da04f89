"""User-facing errors: raised anywhere, printed by the CLI as one line without a traceback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator


class BnexpError(Exception):
    """A problem the user can fix (bad value, missing file, ...); the message says how."""

    exit_code = 2
    prefix = "error"  # the word the CLI prints before the message


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, a scheduler's stop) like Ctrl-C inside the block, so a run or sweep
    ends as ``interrupted`` with its checkpoint kept; SIGINT is restored to Python's default too
    (a job started in the background ignores it otherwise)."""
    previous = {sig: signal.signal(sig, _interrupt if sig == signal.SIGTERM else signal.default_int_handler)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Diverged(BnexpError):
    exit_code = 3


class Interrupted(BnexpError):
    """Ctrl-C or SIGTERM: the run is kept as ``interrupted`` with its last checkpoint."""

    exit_code = 130
    prefix = "interrupted"


def describe_error(exc: BaseException) -> str:
    """One line for the record: a user error's message, a failed write with its path, else the type."""
    if isinstance(exc, BnexpError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        name = os.fsdecode(exc.filename)  # TensorBoard's file layer names files in bytes
        return f"cannot write {name}: {write_failure(exc, Path(name).parent)}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def write_failure(exc: BaseException, directory: Path) -> str:
    """Why a write failed, in words: the OS's reason, or a full disk when that is what it was."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    try:
        if shutil.disk_usage(directory).free < 1 << 20:
            return "No space left on device"
    except OSError:
        pass
    return str(exc).splitlines()[0][:160]


def error_line(message: str, prefix: str = "error") -> None:
    """Print one red ``error:`` line to stderr (Rich markup in the message is not interpreted).

    Into a pipe or a log it stays one line. On a terminal it breaks between words at the
    terminal's width, and a command it ends with (``...; continue with: bnexp train resume=RUN``)
    goes on a line of its own, whole, so it is never broken inside a word and copies in one piece."""
    from rich.console import Console
    from rich.text import Text

    from bnexp.core.text import escape

    style = "bold yellow" if prefix != "error" else "bold red"
    text = escape(" ".join(message.split()))
    console = Console(stderr=True, soft_wrap=True)
    prose, command = split_command(text) if console.is_terminal else (text, None)
    console.print(Text(f"{prefix}: ", style=style) + Text(prose), soft_wrap=not console.is_terminal)
    if command is not None:
        console.print("  " + " ".join(_shorter_path(word) for word in command.split()), markup=False,
                      highlight=False)


COMMAND_START = ": bnexp "  # "continue with: bnexp ...", "continue it with: bnexp ..."


def split_command(message: str) -> tuple[str, str | None]:
    """``("...; continue with:", "bnexp train resume=RUN")`` for a message that ends with a command."""
    at = message.rfind(COMMAND_START)
    if at < 0 or "; " in message[at:]:
        return message, None
    return message[:at + 1], message[at + 2:]


def _shorter_path(word: str) -> str:
    """``resume=/abs/path/run`` -> ``resume=outputs/runs/run`` when the path from the working
    directory is shorter (a short command fits a terminal line)."""
    import os

    key, _, path = word.rpartition("=")
    if not os.path.isabs(path) or not os.path.exists(path):
        return word
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return word
    return f"{key}={relative}" if key and len(relative) < len(path) else word

