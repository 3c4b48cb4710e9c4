"""Request keys: a stable hash of exactly what a request sends, so equal requests are recognised
across rows, passes and runs, and the compact per-row store of them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .compact import first_rows
from .jsonio import same_dumps, same_dumps_messages


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
    return keyed(model, messages, params, sample, turns)[0]


def keyed(
    model: str,
    messages: Sequence[dict[str, Any]],
    params: Sequence[tuple[str, Any]],
    sample: int = 0,
    turns: Sequence[str] = (),
) -> tuple[str, bytes]:
    """``request_key``, and the JSON of ``messages`` it hashed: the bulk of a request's bytes,
    which its body can send as they are rather than encode them again.

    The key hashes the standard library's text of ``[model, messages, params, sample?, turns?]``.
    That text is its parts' texts joined by commas inside brackets, so hashing the parts one
    after another gives the very same key without joining them (a copy of every byte).
    """
    sent = same_dumps_messages(messages)
    digest = hashlib.sha256(b"[")
    digest.update(same_dumps(model))
    digest.update(b",")
    digest.update(sent)
    digest.update(b",")
    digest.update(same_dumps(params))
    if sample or turns:
        digest.update(b",")
        digest.update(same_dumps(sample))
    if turns:
        digest.update(b",")
        digest.update(same_dumps(turns))
    digest.update(b"]")
    # No sort_keys: rows are built the same way on every pass and every run, so the order is stable,
    # and sorting would be the costliest part of the key.
    return digest.hexdigest()[:32], sent


def messages_key(messages: Sequence[Any]) -> str:
    """A hash of a conversation alone, whatever model and options it is sent with: how the
    simulator finds the expected answer of the row a request came from."""
    return hashlib.sha256(same_dumps(list(messages))).hexdigest()[:32]
