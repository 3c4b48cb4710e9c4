"""Arrow arrays of plain values, built from their buffers rather than by ``pa.array``.

``pa.array`` imports pandas the first time it is given a list (to ask whether the list is a
pandas object): 0.1-0.2 s, as much CPU as a few thousand requests cost batchchat, spent by every
CLI run that writes its output. The columns batchchat adds hold strings, integers, floats and
booleans, built here from a validity bitmap and a data buffer. A value of any other type goes
to ``pa.array``, which converts it or refuses it as it always has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pyarrow as pa

from .reading import clean_text

_NUMBERS: dict[pa.DataType, type[Any]] = {pa.int64(): np.int64, pa.int32(): np.int32, pa.float64(): np.float64}
_NULLABLE = (pa.string(), pa.bool_(), *_NUMBERS)
_EXACT = 1 << 53  # an integer a float holds exactly (pa.array refuses one past it in a float column)
_STRING_BYTES = (1 << 31) - 1  # a string array's 32-bit offsets reach this far


def array_of(values: Sequence[Any], kind: pa.DataType) -> pa.Array[Any]:
    """``pa.array(values, type=kind)``, without loading pandas for the common kinds. Each pass
    over the values is one C loop where it can be (``map``, ``set``, numpy), and a column of
    nulls is made at once: the output's columns are built for every row of every run."""
    values = values if isinstance(values, list) else list(values)
    n = len(values)
    present = [v for v in values if v is not None]
    nulls = n - len(present)
    if nulls == n and kind in _NULLABLE:  # a column no row of the batch has (errors, transcripts...)
        return cast("pa.Array[Any]", pa.nulls(n, kind))  # type: ignore[call-overload]
    types = set(map(type, present))
    try:
        if kind == pa.string() and types <= {str}:
            encoded = [v.encode() for v in values] if not nulls else [v.encode() if v is not None else b"" for v in values]
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=offsets[1:])
            if offsets[-1] <= _STRING_BYTES:
                data = pa.py_buffer(b"".join(encoded))
                return pa.StringArray.from_buffers(n, _buffer(offsets.astype(np.int32)), data, *_nulls(values, nulls))
        elif kind == pa.bool_() and types <= {bool}:
            bits = np.packbits(np.fromiter((v is True for v in values), np.bool_, n), bitorder="little")
            bitmap, count = _nulls(values, nulls)
            return pa.Array.from_buffers(kind, n, [bitmap, _buffer(bits)], count)
        elif kind in _NUMBERS and _numbers_fit(types, present, kind):
            numbers = np.array(values if not nulls else [v if v is not None else 0 for v in values], _NUMBERS[kind])
            bitmap, count = _nulls(values, nulls)
            return pa.Array.from_buffers(kind, n, [bitmap, _buffer(numbers)], count)
    except UnicodeEncodeError:  # a lone surrogate (half a character) in text read from an answer
        return array_of([clean_text(v) if type(v) is str else v for v in values], kind)
    except OverflowError:
        pass  # an integer too wide: pa.array says what is wrong
    return pa.array(values, type=kind)


def _numbers_fit(types: set[type[Any]], present: list[Any], kind: pa.DataType) -> bool:
    """Whether values of ``types`` go into a column of ``kind`` as they are (else ``pa.array``
    decides): whole numbers into any number column (into floats only where a float holds them
    exactly), floats into floats; never booleans."""
    if kind != pa.float64():
        return types <= {int}
    if not types <= {int, float}:
        return False
    return int not in types or all(-_EXACT <= v <= _EXACT for v in present if type(v) is int)


def _nulls(values: list[Any], nulls: int) -> tuple[pa.Buffer | None, int]:
    """The validity bitmap (None when every value is present) and the count of nulls."""
    if not nulls:
        return None, 0
    return _buffer(np.packbits(np.array([v is not None for v in values], np.bool_), bitorder="little")), nulls


def positions(indices: Sequence[int]) -> pa.Array[Any]:
    """Row positions for ``take``, as an int64 array."""
    return pa.Array.from_buffers(pa.int64(), len(indices), [None, _buffer(np.array(indices, np.int64))])


def _buffer(values: np.ndarray[Any, Any]) -> pa.Buffer:
    return pa.py_buffer(values.data)  # no copy: the buffer keeps the array alive
