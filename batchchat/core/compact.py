"""Structures that stay small for a job of ten million rows: request keys to numbers in about
20 bytes a key (``KeyIndex``), the first row of each key (``first_rows``), and measurements in
order (``ordered``).

A job of ten million rows holds its keys in two places: the journal's index (where each key's
record is) and, while planning, the rows that share a request. As a dict or a set of strings
that is 150-200 bytes a key, 2 GB at ten million. Here the latest keys sit in a dict and, past
``FOLD_AT`` of them, are folded into two sorted arrays: the 16 bytes each hexadecimal key stands
for, and its number. A key of another shape (a re-ask's ``key.2``, a turn's) stays in a dict:
there are few. The first row of each key is found by one sort of the 16-byte keys.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

FOLD_AT = 1 << 15  # keys in the dict before they are folded into the arrays (about 5 MB of dict)
COMPARE_STEP = 1 << 20  # sorted keys compared this many at a time (first_rows)
HEX_KEY = 32  # the length of a request key: 16 bytes in hexadecimal


class KeyIndex:
    """A mapping from key to a non-negative integer, with a dict's answers and a fraction of its size."""

    def __init__(self, fold_at: int | None = None) -> None:
        self._fold_at = FOLD_AT if fold_at is None else fold_at
        self._recent: dict[str, int] = {}  # hexadecimal keys not yet folded (may repeat folded ones: newer wins)
        self._odd: dict[str, int] = {}  # keys of any other shape, never folded
        self._keys: np.ndarray[Any, Any] | None = None  # sorted, dtype S16
        self._values: np.ndarray[Any, Any] | None = None  # uint32 (int64 past 4 GB), in the keys' order
        self._hot: dict[str, int] = {}  # the folded keys last prefetched: their numbers, -1 where absent

    def __setitem__(self, key: str, value: int) -> None:
        self._hot.pop(key, None)
        if len(key) != HEX_KEY:
            self._odd[key] = value
            return
        self._recent[key] = value
        if len(self._recent) >= max(self._fold_at, self._folded() // 16):  # folds grow with the arrays
            self._fold()

    def get(self, key: str) -> int | None:
        value = self._recent.get(key)
        if value is not None:
            return value
        if len(key) != HEX_KEY or self._keys is None:
            return self._odd.get(key)
        value = self._odd.get(key)
        if value is not None:
            return value
        value = self._hot.get(key)
        if value is not None:
            return value if value >= 0 else None
        at = self._find(key)
        return None if at is None else int(self._values[at])  # type: ignore[index]

    def prefetch(self, keys: Iterable[str]) -> None:
        """Look the folded keys among ``keys`` up at once, so that asking for each next is a
        dict lookup: one search of the arrays for a batch of rows, not a numpy call a key (a
        third of the CPU of a 200,000-row rerun). Only the last call's keys are held."""
        self._hot = {}
        if self._keys is None or not len(self._keys):  # a fold of only odd keys leaves the arrays empty
            return
        import numpy as np

        wanted: dict[str, bytes] = {}
        for key in keys:
            if len(key) == HEX_KEY and key not in self._recent and key not in wanted:
                try:
                    packed = bytes.fromhex(key)
                except ValueError:
                    continue
                if packed.hex() == key:  # upper case and other shapes are never folded
                    wanted[key] = packed
        if not wanted:
            return
        folded = self._keys
        probe = np.array(list(wanted.values()), dtype="S16")
        at = np.minimum(np.searchsorted(folded, probe), len(folded) - 1)
        found = folded[at] == probe  # compared as arrays (see _find)
        values = self._values[at].astype(np.int64)  # type: ignore[index]
        values[~found] = -1
        self._hot = dict(zip(wanted, values.tolist(), strict=True))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        self._fold()
        return self._folded() + len(self._odd)

    def _folded(self) -> int:
        return 0 if self._keys is None else len(self._keys)

    def _find(self, key: str) -> int | None:
        import numpy as np

        try:
            raw = bytes.fromhex(key)
        except ValueError:  # 32 characters, not a request key: never folded, so never here
            return None
        if raw.hex() != key:  # upper case: never folded either
            return None
        probe = np.frombuffer(raw, dtype="S16")
        keys = self._keys
        assert keys is not None
        at = int(np.searchsorted(keys, probe)[0])
        # compared as arrays: a numpy scalar of S16 drops trailing zero bytes, an array does not
        return at if at < len(keys) and bool((keys[at : at + 1] == probe)[0]) else None

    def _fold(self) -> None:
        """The dict's keys into the arrays: those already there take the newer number."""
        if not self._recent:
            return
        import numpy as np

        recent = self._recent
        raw: list[bytes] = []
        values: list[int] = []
        for key, value in recent.items():
            try:
                packed = bytes.fromhex(key)
            except ValueError:
                packed = b""
            if packed.hex() != key:  # 32 characters that are not a request key's: kept as they are
                self._odd[key] = value
                continue
            raw.append(packed)
            values.append(value)
        self._recent = {}
        new_keys = np.array(raw, dtype="S16")
        # Offsets into a journal under 4 GB fit in 4 bytes; past that, 8.
        wide = self._values is not None and self._values.dtype == np.int64
        new_values = np.array(values, dtype=np.int64 if wide or max(values, default=0) >= 1 << 32 else np.uint32)
        order = np.argsort(new_keys, kind="stable")
        new_keys, new_values = new_keys[order], new_values[order]
        if self._keys is None or self._values is None:
            self._keys, self._values = new_keys, new_values
            return
        if new_values.dtype != self._values.dtype:
            self._values = self._values.astype(np.int64)
        at = np.searchsorted(self._keys, new_keys)
        inside = at < len(self._keys)
        known = np.zeros(len(new_keys), dtype=bool)
        known[inside] = self._keys[at[inside]] == new_keys[inside]
        self._values[at[known]] = new_values[known]
        fresh = ~known
        self._keys = np.insert(self._keys, at[fresh], new_keys[fresh])
        self._values = np.insert(self._values, at[fresh], new_values[fresh])


def first_rows(data: bytes | bytearray, none: bytes) -> bytearray:
    """For keys of 16 bytes laid end to end, a byte each: 1 for the first of each value, 0 for
    a repeat and for ``none``. Past ``FOLD_AT`` keys, one stable sort rather than a set."""
    count = len(data) // 16
    if count < FOLD_AT:
        seen = {none}
        first = bytearray(count)
        for row in range(count):
            chunk = bytes(data[16 * row : 16 * row + 16])
            if chunk not in seen:
                seen.add(chunk)
                first[row] = 1
        return first
    import numpy as np

    keys = np.frombuffer(data, dtype="S16")
    order = np.argsort(keys, kind="stable")  # equal keys keep their row order: the first comes first
    starts = np.ones(count, dtype=np.uint8)
    step = COMPARE_STEP  # keys compared a slice at a time: a sorted copy of them all is 16 bytes a row more
    for begin in range(1, count, step):
        end = min(begin + step, count)
        starts[begin:end] = keys[order[begin:end]] != keys[order[begin - 1 : end - 1]]
    flags = np.empty(count, dtype=np.uint8)
    flags[order] = starts
    del order, starts
    flags[keys == np.frombuffer(none, dtype="S16")] = 0
    return bytearray(flags.tobytes())


def ordered(values: array[float]) -> Sequence[float]:
    """``sorted(values)``, in 8 bytes a value past ``FOLD_AT`` of them rather than a list's 32."""
    if len(values) < FOLD_AT:
        return sorted(values)
    import numpy as np

    return np.sort(np.frombuffer(values, dtype=np.float64))  # type: ignore[return-value]
