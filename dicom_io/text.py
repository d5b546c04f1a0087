"""Showing text that came from a DICOM file (or a PACS) to a user, safely.

DICOM attributes are data written by someone else: a SeriesDescription may hold an ESC sequence that
recolours or clears the user's terminal, a carriage return that overwrites the line, or a bidi override
that reverses what follows. `printable` is the one place such text is made safe before it is printed
or put in an error message; the data itself (``SourceRef``, written DICOM) keeps the original value.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls, DEL, C1 controls, and the Unicode bidi embedding/override/isolate marks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(value: object) -> str:
    """``str(value)`` with every control character shown as an escape (``\\x1b``, ``\\u202e``).

    Parameters
    ----------
    value : object
        Usually a DICOM attribute value (str, PersonName, MultiValue); None gives ``''``.

    Returns
    -------
    str
        The same text with C0/C1 control characters (ESC, CR, LF, TAB, NUL, DEL, ...) and Unicode bidi
        controls replaced by their visible escapes, so nothing in it acts on the terminal.

    Examples
    --------
    >>> printable("Thorax\\x1b[31m")
    'Thorax\\\\x1b[31m'
    >>> printable("Müller")
    'Müller'
    """
    if value is None:
        return ""
    return _CONTROL.sub(_escape, str(value))
