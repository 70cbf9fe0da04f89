"""User-facing errors: raised anywhere, printed by the CLI as one line without a traceback."""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class BnexpError(Exception):
    """A problem the user can fix (bad value, missing file, ...); the message says how."""

    exit_code = 2
    label = "error"  # the word the CLI prints before the message


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
