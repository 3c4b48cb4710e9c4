"""Rows into requests: the messages each row sends, and the key that identifies the request.

A row's messages are ``[system] + [history] + [user prompt]``: the system prompt from the job,
the history from the messages column, and the prompt from the prompt column or template. Any
part may be absent, but a row must send at least one message of its own.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .errors import JobError
from .job import Job
from .records import ChatRequest, InvalidRow
from .source import TableSource
from .template import cell_text, parse_template

ROLES = ("system", "user", "assistant", "tool")
MESSAGES_HELP = 'expected a JSON list of {"role": ..., "content": ...} objects'


class RequestBuilder:
    """Builds one request per row; constructing it checks every named column exists."""

    def __init__(self, job: Job, columns: Sequence[str], source_name: str) -> None:
        self.job = job
        self.source_name = source_name
        prompt = job.prompt
        self.template = parse_template(prompt.template) if prompt.template else None
        self.prompt_column = prompt.column
        self.messages_column = prompt.messages_column
        self.system = prompt.system
        self.params = job.params
        needed: list[tuple[str, str]] = []
        if self.prompt_column:
            needed.append((self.prompt_column, "the prompt column (--prompt-column / prompt_column)"))
        if self.messages_column:
            needed.append((self.messages_column, "the messages column (--messages-column / messages_column)"))
        if self.template:
            needed += [(name, "a placeholder in the template") for name in self.template.columns]
        for name, role in needed:
            if name not in columns:
                raise JobError(missing_column(source_name, name, role, columns))
        self.columns = list(dict.fromkeys(name for name, _ in needed))

    def rows(self, source: TableSource) -> Iterator[tuple[pa.RecordBatch, list[ChatRequest | InvalidRow]]]:
        """Every input batch with the request (or reason for none) of each of its rows, in order.

        Keys are the same on every pass over the same input. Without dedup, identical requests
        are told apart by their occurrence (the first keeps the plain key), so each is sent.
        """
        start = 0
        occurrences: Counter[str] | None = None if self.job.dedup else Counter()
        for batch in source.batches():
            yield batch, self.build(batch, start, occurrences)
            start += batch.num_rows

    def requests(self, source: TableSource, keys: RowKeys, wanted: Sequence[int]) -> Iterator[ChatRequest]:
        """The requests of the rows ``wanted`` marks (truthy by row), built one row at a time.

        Keys come from an earlier pass (``rows``), so nothing is hashed again, and the messages of
        rows not wanted (answered already, invalid, repeats) are never built. One row at a time
        keeps the event loop free: a whole batch at once would stall in-flight answers.
        """
        start = 0
        model = self.job.model
        for batch in source.batches():
            values: dict[str, list[Any]] | None = None
            for i in range(batch.num_rows):
                row = start + i
                if not wanted[row]:
                    continue
                key = keys[row]
                assert key is not None, "a row with nothing to send is never wanted"
                if values is None:
                    values = {name: batch.column(name).to_pylist() for name in self.columns}
                messages = self._messages(row, {name: col[i] for name, col in values.items()})
                assert not isinstance(messages, str), "a row valid in the first pass is valid now"
                yield ChatRequest(row=row, key=key, model=model, messages=messages, params=self.params)
            start += batch.num_rows

    def build(
        self, batch: pa.RecordBatch, start: int, occurrences: Counter[str] | None = None
    ) -> list[ChatRequest | InvalidRow]:
        """Requests for the rows of ``batch``, whose first row is input row ``start`` (0-based)."""
        values = {name: batch.column(name).to_pylist() for name in self.columns}
        model = self.job.model
        items: list[ChatRequest | InvalidRow] = []
        for i in range(batch.num_rows):
            row = start + i
            messages = self._messages(row, {name: col[i] for name, col in values.items()})
            if isinstance(messages, str):
                items.append(InvalidRow(row, model, messages))
                continue
            key = request_key(model, messages, self.params)
            if occurrences is not None:
                sample = occurrences[key]
                occurrences[key] = sample + 1
                if sample:
                    key = request_key(model, messages, self.params, sample)
            items.append(ChatRequest(row=row, key=key, model=model, messages=messages, params=self.params))
        return items

    def _messages(self, row: int, cells: dict[str, Any]) -> tuple[dict[str, Any], ...] | str:
        """The row's messages, or the reason it has none worth sending."""
        history: list[dict[str, Any]] = []
        if self.messages_column:
            history = parse_messages(
                cells[self.messages_column],
                where=f"{self.source_name}, row {row + 1}, column '{self.messages_column}'",
            )
        prompt: str | None = None
        if self.template:
            prompt = self.template.render(cells)
        elif self.prompt_column:
            prompt = cell_text(cells[self.prompt_column])
        if prompt is not None and not prompt.strip():
            if not history:
                return "empty prompt: the row has no text to send"
            prompt = None
        if not history and prompt is None:
            return "empty conversation: the messages cell is empty and there is no prompt"
        messages: list[dict[str, Any]] = []
        if self.system and not (history and history[0]["role"] == "system"):
            messages.append({"role": "system", "content": self.system})
        messages += history
        if prompt is not None:
            messages.append({"role": "user", "content": prompt})
        return tuple(messages)


def parse_messages(cell: Any, where: str) -> list[dict[str, Any]]:
    """A conversation from a cell: JSON text, or a list already (Parquet lists, JSONL arrays)."""
    if cell is None:
        return []
    if isinstance(cell, str):
        if not cell.strip():
            return []
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as e:
            raise JobError(f"{where}: not valid JSON ({e.msg} at character {e.pos + 1}); {MESSAGES_HELP}") from None
    if not isinstance(cell, list):
        raise JobError(f"{where}: got a JSON {type(cell).__name__}; {MESSAGES_HELP}")
    messages = []
    for n, message in enumerate(cell, 1):
        if not isinstance(message, dict):
            raise JobError(f"{where}: message {n} is not an object; {MESSAGES_HELP}")
        # Arrow structs give every field to every message; a missing field reads None there.
        message = {k: v for k, v in message.items() if v is not None}
        role = message.get("role")
        if role not in ROLES:
            raise JobError(f"{where}: message {n} has role {role!r}; use one of {', '.join(ROLES)}")
        content = message.get("content")
        text_ok = isinstance(content, str) or (isinstance(content, list) and role == "user")
        tool_call = content is None and role == "assistant" and bool(message.get("tool_calls"))
        if not (text_ok or tool_call):
            raise JobError(f"{where}: message {n} ({role}) has no text content; {MESSAGES_HELP}")
        if role == "tool" and "tool_call_id" not in message:
            raise JobError(f"{where}: message {n} (tool) needs a tool_call_id")
        messages.append(message)
    return messages


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


def request_key(
    model: str, messages: Sequence[dict[str, Any]], params: Sequence[tuple[str, Any]], sample: int = 0
) -> str:
    """A stable hash of exactly what is sent: equal requests get equal keys across runs.

    ``sample`` tells apart repeats of one request that are each to be answered (no dedup).
    """
    parts: list[Any] = [model, messages, params]
    if sample:
        parts.append(sample)
    # No sort_keys: rows are built the same way on every pass and every run, so the order is stable,
    # and sorting would be the costliest part of the key.
    payload = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def missing_column(source: str, name: str, role: str, columns: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(columns), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    shown = ", ".join(map(repr, columns[:20])) + (", ..." if len(columns) > 20 else "")
    return f"{source} has no column '{name}' ({role}); its columns are {shown}{hint}"
