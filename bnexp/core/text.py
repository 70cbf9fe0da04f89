"""Text from files and overrides, made safe to print: one escape function used by every view.

A run's record, labels or overrides may come from anywhere; an ESC or OSC sequence stored in one
(``\\x1b]52;c;...`` writes the clipboard, ``\\x1b]0;...`` the window title, ``\\x1b[2J`` clears the
screen) must be shown, not obeyed. As ``git`` and ``ls`` do, control characters are printed as
visible escapes (``\\x1b``). Torch-free, import-free.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators and bidi overrides that
# can make a line print as something else
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(value: Any, keep: str = "") -> str:
    """``str(value)`` with control characters shown as ``\\x1b``-style escapes; characters in
    ``keep`` (e.g. ``"\\n\\t"`` for a note) are left as they are. Fast when there is nothing to do."""
    text = value if isinstance(value, str) else str(value)
    if not _CONTROL.search(text):
        return text
    if keep:
        return _CONTROL.sub(lambda m: m.group(0) if m.group(0) in keep else _visible(m), text)
    return _CONTROL.sub(_visible, text)


def has_control(text: str, allowed: str = "") -> bool:
    return any(ch not in allowed for ch in _CONTROL.findall(text))


def finite(data):
    """``data`` with NaN and infinities as None: ``--json`` output is strict JSON (``jq`` and
    other readers refuse ``NaN``); the tables still show the value."""
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data
