"""Request keys: a stable hash of exactly what a request sends, so equal requests are recognised
across rows, passes and runs, and the compact per-row store of them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .compact import first_rows
from .jsonio import same_dumps, same_dumps_request


class RowKeys:
    """Every input row's request key, 16 bytes a row, worked out once and read by later passes.

    Hashing a request costs more than sending it takes batchchat otherwise; a million rows' keys
    take 16 MB here. A row with nothing to send has no key (stored as zeros).
    """

    _NONE = bytes(16)

    def __init__(self) -> None:
        self._data = bytearray()

    def append(self, key: str | None) -> None:
        self._data += bytes.fromhex(key) if key is not None else self._NONE

    def __len__(self) -> int:
        return len(self._data) // 16

    def __getitem__(self, row: int) -> str | None:
        chunk = self._data[16 * row : 16 * row + 16]
        return None if chunk == self._NONE else chunk.hex()

    def firsts(self) -> bytearray:
        """A byte a row: 1 where the row is the first with its key (a row with none never is)."""
        return first_rows(self._data, self._NONE)


def request_key(
    model: str,
    messages: Sequence[dict[str, Any]],
    params: Sequence[tuple[str, Any]],
    sample: int = 0,
    turns: Sequence[str] = (),
) -> str:
    """A stable hash of exactly what is sent: equal requests get equal keys across runs.

    ``sample`` tells apart repeats of one request that are each to be answered (no dedup);
    ``turns`` are the user turns of a scripted conversation, sent after ``messages``.
    """
    parts: list[Any] = [model, messages, params]
    if sample or turns:
        parts.append(sample)
    if turns:
        parts.append(turns)
    # No sort_keys: rows are built the same way on every pass and every run, so the order is stable,
    # and sorting would be the costliest part of the key.
    return hashlib.sha256(same_dumps_request(parts, messages, params)).hexdigest()[:32]


def messages_key(messages: Sequence[Any]) -> str:
    """A hash of a conversation alone, whatever model and options it is sent with: how the
    simulator finds the expected answer of the row a request came from."""
    return hashlib.sha256(same_dumps(list(messages))).hexdigest()[:32]
