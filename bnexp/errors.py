"""User-facing errors: raised anywhere, printed by the CLI as one line without a traceback."""


class BnexpError(Exception):
    """A problem the user can fix (bad value, missing file, ...); the message says how."""

    exit_code = 2
