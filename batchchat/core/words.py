"""How numbers and server text read in messages: counts with their nouns, dollars, durations, and
text made safe for a terminal. Shared by the library's messages and the CLI's lines, so both say
the same thing the same way."""

from __future__ import annotations

import math
import re

# C0 and C1 control characters (but tab and newline), DEL, and the bidirectional overrides that
# can make text read other than it is.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters and escape sequences removed, and
    half a character (a lone surrogate, which no terminal encoding can write) shown as U+FFFD."""
    return _SURROGATE.sub("\ufffd", _UNPRINTABLE.sub("", text))


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``1,000 rows`` (``nouns`` where adding an s is wrong)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {nouns or noun + 's'}"


def dollars(value: float | None) -> str:
    """Cents, and below a dollar two significant digits: a small run's $0.00031 is not $0.0000."""
    if value is None:
        return "-"
    if value >= 1 or value <= 0:
        return f"${value:,.2f}"
    decimals = min(max(2, 1 - math.floor(math.log10(value))), 10)
    return f"${value:.{decimals}f}"


def duration(seconds: float) -> str:
    """``0.4 s`` under ten seconds (a short run is not ``0 s``), whole seconds to 90, then minutes, hours."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
