"""JSON on the hot path: each request's body, each answer, each journal record.

The standard library's encoder and decoder were a tenth of the client's CPU time per request
(benchmarks/README.md); orjson does the same work in a fraction of it. Where orjson is missing,
or refuses what the standard library takes (an integer past 64 bits or a lone surrogate to
write; NaN, a lone surrogate or a byte-order mark to read), the standard library decides. Two
differences remain: orjson writes NaN and infinities as null (the standard library wrote NaN,
which is not JSON; an answer holding them is kept with their names instead, ``reading.bounded``),
and reads an integer past 64 bits as the nearest float (an answer the standard library read is
made to hold that float too, ``reading.bounded``, so that it reads the same when read back).
Request keys are hashed from the standard library's text (``same_dumps``), so they do not change
with this module.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency, but the code does not need it
    orjson = None  # type: ignore[assignment]

# Where orjson's text may differ from the standard library's: NaN and infinities (null), floats
# under 1e-4 (1e-05 as 0.00001, 1e-07 as 1e-7). Text that merely contains one goes the slow way.
_EXPONENT = re.compile(rb"[0-9]e-[0-9]")


def _may_differ(text: bytes) -> bool:
    # Substring tests first: a regular expression over the whole text cost more than orjson.
    return b"null" in text or b"0.0000" in text or (b"e-" in text and _EXPONENT.search(text) is not None)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``.
    Text holding a lone surrogate (an answer cut inside a UTF-16 pair, as received) is written
    with its escapes (``\\ud83d``), which read back to the very same text."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


# Dates, dataclasses and subclasses of str, int, dict and list go to ``_refuse`` (the standard
# library writes a subclass its own way, and refuses the others). orjson still writes a UUID and
# a plain Enum, which the standard library refuses; no value batchchat reads holds one.
_ONLY_JSON = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
              if orjson is not None else 0)  # fmt: skip


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def same_dumps(value: Any) -> bytes:
    """Exactly the standard library's bytes (``dumps`` without orjson), for hashing: a request
    key must not change when orjson is installed or upgraded, or a rerun would pay again.
    orjson writes them where its text is known to be the same, at a fifth of the cost."""
    if orjson is not None:
        try:
            text = orjson.dumps(value, default=_refuse, option=_ONLY_JSON)
        except TypeError:
            pass
        else:
            if not _may_differ(text):
                return text
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def same_dumps_request(parts: list[Any], messages: Any, params: Any) -> bytes:
    """``same_dumps(parts)`` for a request key's parts: model, ``messages``, ``params``, then a
    sample number and user turns. Where the messages are all text (nearly always) only the
    options' text is looked at for where orjson's may differ: orjson writes every text as the
    standard library does (tests/test_jsonio.py checks every character) and differs only in
    numbers. Looking at the whole text read every byte of a prompt three times, more than
    encoding it took."""
    if orjson is not None and _texts_only(messages):
        try:
            text = orjson.dumps(parts, default=_refuse, option=_ONLY_JSON)
            if _plain(params) or not _may_differ(orjson.dumps(params, default=_refuse, option=_ONLY_JSON)):
                return text
        except TypeError:  # a lone surrogate, or what orjson refuses: the standard library decides
            pass
    return same_dumps(parts)


def _plain(params: Any) -> bool:
    """Whether request options (name, value) are all written alike by orjson and the standard
    library, by their values' types alone: text, whole numbers, true, false, null, and floats
    that are 0 or from 1e-4 up (smaller ones orjson writes without an exponent)."""
    for _, value in params:
        kind = type(value)
        if kind is float:
            if not (value == 0.0 or 1e-4 <= abs(value) < math.inf):
                return False
        elif not (kind is str or kind is int or kind is bool or value is None):
            return False
    return True


def _texts_only(messages: Any) -> bool:
    """Whether ``messages`` are plain objects of plain text, keys and values."""
    if type(messages) not in (tuple, list):
        return False
    for message in messages:
        if type(message) is not dict:
            return False
        for name, value in message.items():
            if type(name) is not str or type(value) is not str:
                return False
    return True


def loads(data: bytes | str) -> Any:
    """``json.loads``: raises ``json.JSONDecodeError`` (or ``UnicodeDecodeError``) as it does."""
    return loads_how(data)[0]


def loads_how(data: bytes | str) -> tuple[Any, bool]:
    """The value, and whether orjson read it. When the standard library did (NaN, a lone
    surrogate, a byte-order mark, UTF-16), the value may hold what orjson reads otherwise when it
    is read back (an integer past 64 bits, as a float): ``reading.bounded`` makes it the same."""
    if orjson is not None:
        try:
            return orjson.loads(data), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(data), False
