"""Arrow arrays of plain values, built from their buffers rather than by ``pa.array``.

``pa.array`` imports pandas the first time it is given a list (to ask whether the list is a
pandas object): 0.1-0.2 s, as much CPU as a few thousand requests cost batchchat, spent by every
CLI run that writes its output. The columns batchchat adds hold strings, integers, floats and
booleans, built here from a validity bitmap and a data buffer. A value of any other type goes
to ``pa.array``, which converts it or refuses it as it always has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .reading import clean_text

_NUMBERS: dict[pa.DataType, type[Any]] = {pa.int64(): np.int64, pa.int32(): np.int32, pa.float64(): np.float64}
_EXACT = 1 << 53  # an integer a float holds exactly (pa.array refuses one past it in a float column)
_STRING_BYTES = (1 << 31) - 1  # a string array's 32-bit offsets reach this far


def array_of(values: Sequence[Any], kind: pa.DataType) -> pa.Array[Any]:
    """``pa.array(values, type=kind)``, without loading pandas for the common kinds."""
    n = len(values)
    valid = [v is not None for v in values]
    present = [v for v in values if v is not None]
    try:
        if kind == pa.string() and all(type(v) is str for v in present):
            encoded = [v.encode() if v is not None else b"" for v in values]
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=offsets[1:])
            if offsets[-1] <= _STRING_BYTES:
                data = pa.py_buffer(b"".join(encoded))
                return pa.StringArray.from_buffers(n, _buffer(offsets.astype(np.int32)), data, *_nulls(valid))
        elif kind == pa.bool_() and all(type(v) is bool for v in present):
            bits = np.packbits(np.fromiter((v is True for v in values), np.bool_, n), bitorder="little")
            bitmap, nulls = _nulls(valid)
            return pa.Array.from_buffers(kind, n, [bitmap, _buffer(bits)], nulls)
        elif kind in _NUMBERS and all(_number(v, kind) for v in present):
            numbers = np.fromiter((v if v is not None else 0 for v in values), _NUMBERS[kind], n)
            bitmap, nulls = _nulls(valid)
            return pa.Array.from_buffers(kind, n, [bitmap, _buffer(numbers)], nulls)
    except UnicodeEncodeError:  # a lone surrogate (half a character) in text read from an answer
        return array_of([clean_text(v) if type(v) is str else v for v in values], kind)
    except OverflowError:
        pass  # an integer too wide: pa.array says what is wrong
    return pa.array(values, type=kind)


def _number(value: Any, kind: pa.DataType) -> bool:
    """Whether ``value`` goes into a column of ``kind`` as it is (else ``pa.array`` decides)."""
    if type(value) is int:
        return kind != pa.float64() or -_EXACT <= value <= _EXACT
    return type(value) is float and kind == pa.float64()


def _nulls(valid: list[bool]) -> tuple[pa.Buffer | None, int]:
    """The validity bitmap (None when every value is present) and the count of nulls."""
    nulls = len(valid) - sum(valid)
    if not nulls:
        return None, 0
    return _buffer(np.packbits(np.array(valid, np.bool_), bitorder="little")), nulls


def positions(indices: Sequence[int]) -> pa.Array[Any]:
    """Row positions for ``take``, as an int64 array."""
    return pa.Array.from_buffers(pa.int64(), len(indices), [None, _buffer(np.array(indices, np.int64))])


def _buffer(values: np.ndarray[Any, Any]) -> pa.Buffer:
    return pa.py_buffer(values.data)  # no copy: the buffer keeps the array alive
