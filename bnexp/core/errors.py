"""User-facing errors: raised anywhere, printed by the CLI as one line without a traceback."""

from __future__ import annotations

import contextlib
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
        return f"cannot write {exc.filename}: {write_failure(exc, Path(exc.filename).parent)}"
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
    """Print one red ``error:`` line to stderr (Rich markup in the message is not interpreted)."""
    from rich.console import Console
    from rich.text import Text

    from bnexp.core.text import escape

    style = "bold yellow" if prefix != "error" else "bold red"
    Console(stderr=True, soft_wrap=True).print(Text(f"{prefix}: ", style=style) + Text(escape(" ".join(message.split()))))
