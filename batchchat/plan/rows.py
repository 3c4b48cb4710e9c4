"""Rows into requests: the messages each row sends, the options it sends them with, and the key
that identifies the request.

A row's messages are ``[system] + [history] + [user prompt]``: the system prompt from the job,
the history from the messages column, and the prompt from the prompt column or template. Any
part may be absent, but a row must send at least one message of its own.

``row_requests`` is the whole of it for one Arrow batch, a pure function of the batch and the
``RowSpec`` (the parts of the job it needs), so any engine can call it on a shard of the input.
``RequestBuilder`` adds what a pass over a whole input needs: the check that every named
column exists, the numbering of rows across batches, and the lazy rebuild of the requests to
send, each checked against the key the plan gave its row.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import InputChanged, JobError
from ..core.keys import RowKeys, request_key
from ..core.records import ChatRequest, InvalidRow
from ..core.template import Template, cell_text, parse_template
from ..job.spec import RESERVED_PARAMS, Job, Params, Prompt, RowOptions, Scoring, not_json, option_problem
from ..providers import dialect

if TYPE_CHECKING:
    import pyarrow as pa

    from ..input.source import TableSource

ROLES = ("system", "user", "assistant", "tool")
MESSAGES_HELP = 'expected a JSON list of {"role": ..., "content": ...} objects'
CHECK_EVERY = 64  # requests sent between looks at whether the input file changed (a stat call)
Messages = tuple[dict[str, Any], ...]
Content = tuple[Messages, tuple[str, ...]]  # a row's messages, and its scripted user turns
Asked = tuple["Slot", Messages, "Params", "Params", tuple[str, ...]]  # slot, messages, options, key options, turns


@dataclass(frozen=True)
class Slot:
    """One of the requests each input row makes: a model and a variant of the request options."""

    model: str
    variant: str | None
    params: Params  # the job's options, the variant's over them


@dataclass(frozen=True)
class RowSpec:
    """What turns a row into its requests: the parts of a job this module needs, and no more.

    Output rows are numbered ``input_row * fanout + slot``: a row's answers sit together, in the
    order of the models, then the variants.
    """

    system: str | None
    prompt_column: str | None  # None: no prompt column (a template, turns, or history alone)
    template: Template | None
    messages_column: str | None
    turns_column: str | None
    slots: tuple[Slot, ...]
    row_options: RowOptions
    scoring: Scoring
    dedup: bool
    # The response_format that asks for the job's JSON belongs to its answer checks: a changed
    # schema judges stored answers again (the journal's scope) rather than making new requests.
    check_format: Mapping[str, Any] | None = None
    wire: str = "openai"  # the endpoint's wire format, which may refuse a row's request options
    provider: str = ""

    @classmethod
    def of(cls, job: Job, columns: Sequence[str]) -> RowSpec:
        """The job's row parts, for an input with ``columns`` (the default prompt column beside a
        messages column is used only where the input has it)."""
        prompt: Prompt = job.prompt
        column = prompt.column
        if prompt.column_optional and column not in columns:
            column = None
        base = dict(job.params)
        variants = job.variants or (None,)
        slots = tuple(
            Slot(model, v.name if v else None, tuple(sorted({**base, **dict(v.params)}.items())) if v else job.params)
            for model in job.models
            for v in variants
        )
        return cls(
            system=prompt.system,
            prompt_column=column,
            template=parse_template(prompt.template) if prompt.template else None,
            messages_column=prompt.messages_column,
            turns_column=prompt.turns_column,
            slots=slots,
            row_options=job.row_options,
            scoring=job.scoring,
            dedup=job.dedup,
            check_format=job.answers.response_format if job.answers.json_required else None,
            wire=job.endpoint.dialect,
            provider=job.endpoint.provider,
        )

    @property
    def fanout(self) -> int:
        return len(self.slots)

    @property
    def groups(self) -> tuple[tuple[str, str | None], ...]:
        """Each slot's (model, variant): an output row's group, by its place in the fan-out."""
        return tuple((slot.model, slot.variant) for slot in self.slots)

    def key_params(self, params: Params) -> Params:
        """The request options that identify a request: all but the job's own response_format."""
        if self.check_format is None or ("response_format", self.check_format) not in params:
            return params
        return tuple(item for item in params if item[0] != "response_format")

    def turn_key(self, request: ChatRequest, messages: Messages) -> str:
        """The key of one turn of a scripted conversation: its messages so far, sent alone."""
        return request_key(request.model, messages, self.key_params(request.params))

    def columns(self, names: Callable[[str], str] = lambda key: f"{key}=") -> list[tuple[str, str]]:
        """Every input column a row is read from, with its role (``names`` names the setting)."""
        needed: list[tuple[str, str]] = []
        if self.prompt_column:
            needed.append((self.prompt_column, f"the prompt column, {names('prompt_column')}"))
        if self.messages_column:
            needed.append((self.messages_column, f"the messages column, {names('messages_column')}"))
        if self.turns_column:
            needed.append((self.turns_column, f"the turns column, {names('turns_column')}"))
        if self.template:
            needed += [(name, "a placeholder in the template") for name in self.template.columns]
        for field, column in self.row_options.columns:
            needed.append((column, f"the column of request option '{field}' (option_columns)"))
        if self.row_options.json_column:
            needed.append((self.row_options.json_column, f"the options column, {names('options_column')}"))
        if self.scoring.expected_column:
            needed.append((self.scoring.expected_column, f"the expected answers, {names('expected_column')}"))
        return needed


def row_requests(spec: RowSpec, batch: pa.RecordBatch, start: int, source_name: str,
                 occurrences: Counter[str] | None = None,
                 samples: dict[int, int] | None = None) -> list[ChatRequest | InvalidRow]:  # fmt: skip
    """The request (or the reason for none) of each output row of ``batch``, whose first row is
    input row ``start`` (0-based); raises JobError for a cell that could never be sent.

    With dedup (the default) this is a pure function of the batch, and a shard gives the keys the
    whole input gives. Without it, identical requests are told apart by their occurrence over the
    whole input (the first keeps the plain key, so each is sent): pass one ``occurrences`` to
    every batch, in input order; ``samples`` then receives the occurrence of each repeat's row.
    """
    if spec.dedup:
        occurrences = None
    elif occurrences is None:
        raise ValueError("without dedup, repeats are numbered over the whole input: pass the same occurrences "
                         "Counter to every batch, in order")  # fmt: skip
    reader = _Reader(spec, source_name)
    values = {name: batch.column(name).to_pylist() for name in reader.columns}
    fanout = spec.fanout
    items: list[ChatRequest | InvalidRow] = []
    for i in range(batch.num_rows):
        row = start + i
        cells = {name: col[i] for name, col in values.items()}
        asked = reader.requests(row, cells)
        if spec.scoring.expected_column:
            reader.check_expected(row, cells[spec.scoring.expected_column])
        if isinstance(asked, str):
            items += [InvalidRow(row * fanout + j, slot.model, asked) for j, slot in enumerate(spec.slots)]
            continue
        for j, (slot, messages, params, key_params, turns) in enumerate(asked):
            out = row * fanout + j
            key = request_key(slot.model, messages, key_params, turns=turns)
            if occurrences is not None:
                sample = occurrences[key]
                occurrences[key] = sample + 1
                if sample:
                    key = request_key(slot.model, messages, key_params, sample, turns)
                    if samples is not None:
                        samples[out] = sample
            items.append(ChatRequest(row=out, key=key, model=slot.model, messages=messages, params=params, turns=turns))
    return items


def _params(slot: Slot, options: dict[str, Any] | None) -> Params:
    """The slot's request options, with the row's own over them."""
    if not options:
        return slot.params
    return tuple(sorted({**dict(slot.params), **options}.items()))


class RequestBuilder:
    """The requests of a whole input, pass after pass; constructing it checks that every column a
    row is read from exists."""

    def __init__(self, spec: RowSpec, columns: Sequence[str], source_name: str,
                 names: Callable[[str], str] = lambda key: f"{key}=") -> None:  # fmt: skip
        self.spec = spec
        self.source_name = source_name
        needed = spec.columns(names)
        for name, role in needed:
            if name not in columns:
                raise JobError(missing_column(source_name, name, role, columns))
        self.columns = list(dict.fromkeys(name for name, _ in needed))
        self.slots = spec.slots
        self.fanout = spec.fanout
        self.samples: dict[int, int] = {}  # without dedup: the occurrence of each repeated request, by row

    def describe(self) -> str:
        """Which settings and columns make each row's messages, in the order they are sent."""
        spec = self.spec
        parts = []
        if spec.system:
            parts.append("the system prompt")
        if spec.messages_column:
            parts.append(f"the history in column '{spec.messages_column}'")
        if spec.turns_column:
            parts.append(f"each user turn in column '{spec.turns_column}', one request after another")
        elif spec.template:
            parts.append(f"the template over column(s) {', '.join(map(repr, spec.template.columns))}")
        elif spec.prompt_column:
            parts.append(f"the prompt in column '{spec.prompt_column}'")
        return " + ".join(parts)

    def rows(self, source: TableSource) -> Iterator[tuple[pa.RecordBatch, list[ChatRequest | InvalidRow]]]:
        """Every input batch with the request (or reason for none) of each of its output rows.

        Keys are the same on every pass over the same input.
        """
        start = 0
        occurrences: Counter[str] | None = None if self.spec.dedup else Counter()
        self.samples = {}
        for batch in source.batches():
            yield batch, row_requests(self.spec, batch, start, self.source_name, occurrences, self.samples)
            start += batch.num_rows

    def requests(self, source: TableSource, keys: RowKeys, wanted: Sequence[int],
                 from_row: int = 0) -> Iterator[ChatRequest]:  # fmt: skip
        """The requests of the output rows ``wanted`` marks (truthy by row), from ``from_row`` on,
        built one at a time.

        The messages of rows not wanted (answered already, invalid, repeats) are never built. One
        row at a time keeps the event loop free: a whole batch at once would stall in-flight
        answers. Each request is hashed again and must have the key the plan gave its row: an
        input that changed since cannot send one row's prompt under another row's key, which
        would put a wrong answer in the journal for good.
        """
        return watched(self._built(source, keys, wanted, from_row), source)

    def _built(self, source: TableSource, keys: RowKeys, wanted: Sequence[int],
               from_row: int) -> Iterator[ChatRequest]:  # fmt: skip
        spec = self.spec
        reader = _Reader(spec, self.source_name)
        start = 0
        fanout = self.fanout
        planned = len(keys)
        for batch in source.batches():
            values: dict[str, list[Any]] | None = None
            if (start + batch.num_rows) * fanout > planned:
                raise InputChanged(self.source_name, "it has more rows than when the run began")
            for i in range(max(0, from_row // fanout - start), batch.num_rows):  # rows before: kept by the plan
                first = (start + i) * fanout
                if not (wanted[first] if fanout == 1 else any(wanted[first : first + fanout])):
                    continue
                if values is None:
                    values = {name: batch.column(name).to_pylist() for name in reader.columns}
                cells = {name: col[i] for name, col in values.items()}
                asked = reader.requests(start + i, cells)
                if isinstance(asked, str):
                    raise InputChanged(self.source_name, f"row {start + i + 1} no longer has anything to send")
                for j, (slot, messages, params, key_params, turns) in enumerate(asked):
                    if wanted[first + j] and first + j >= from_row:
                        key = keys[first + j]
                        again = request_key(slot.model, messages, key_params, self.samples.get(first + j, 0), turns)
                        if key != again:
                            raise InputChanged(self.source_name, f"row {start + i + 1} is not what it was")
                        yield ChatRequest(first + j, key, slot.model, messages, params, turns)
            start += batch.num_rows


def watched(requests: Iterable[ChatRequest], source: TableSource) -> Iterator[ChatRequest]:
    """``requests`` in order (built again from ``source``, or the very ones the plan kept and
    hashed), looking every ``CHECK_EVERY`` at whether the input changed: a batch is up to 65,536
    rows, and a run whose input changed stops soon."""
    for made, request in enumerate(requests, 1):
        yield request
        if made % CHECK_EVERY == 0:
            source.check()


class _Reader:
    """One row's cells into its messages and options, with errors that name the cell."""

    def __init__(self, spec: RowSpec, source_name: str) -> None:
        self.spec = spec
        self.source_name = source_name
        self.columns = list(dict.fromkeys(name for name, _ in spec.columns()))
        self.slot_key_params = [spec.key_params(slot.params) for slot in spec.slots]  # worked out once

    def requests(self, row: int, cells: dict[str, Any]) -> list[Asked] | str:
        """What the row asks of each slot (model and variant), in slot order: messages, options,
        the options that go into its key, scripted turns; or why it has nothing to send."""
        content = self.content(row, cells)
        options = self.options(row, cells)
        if isinstance(content, str):
            return content
        messages, turns = content
        asked = []
        for slot, key_params in zip(self.spec.slots, self.slot_key_params, strict=True):
            params = _params(slot, options)
            asked.append((slot, messages, params, key_params if not options else self.spec.key_params(params), turns))
        return asked

    def content(self, row: int, cells: dict[str, Any]) -> Content | str:
        """The row's messages and scripted turns, or the reason it has nothing worth sending."""
        spec = self.spec
        history: list[dict[str, Any]] = []
        if spec.messages_column:
            history = parse_messages(cells[spec.messages_column], where=self.where(row, spec.messages_column))
        turns: tuple[str, ...] = ()
        prompt: str | None = None
        if spec.turns_column:
            turns = parse_turns(cells[spec.turns_column], where=self.where(row, spec.turns_column))
            if not turns:
                return "no turns: the turns cell is empty"
        elif spec.template:
            prompt = spec.template.render(cells)
        elif spec.prompt_column:
            prompt = cell_text(cells[spec.prompt_column])
        if prompt is not None and not prompt.strip():
            if not history:
                return "empty prompt: the row has no text to send"
            prompt = None
        if not history and prompt is None and not turns:
            return "empty conversation: the messages cell is empty and there is no prompt"
        messages: list[dict[str, Any]] = []
        if spec.system and not (history and history[0]["role"] == "system"):
            messages.append({"role": "system", "content": spec.system})
        messages += history
        if prompt is not None:
            messages.append({"role": "user", "content": prompt})
        return tuple(messages), turns

    def options(self, row: int, cells: dict[str, Any]) -> dict[str, Any] | None:
        """Request options the row sets for itself; they win over the job's and the variant's."""
        spec = self.spec.row_options
        if not spec.columns and not spec.json_column:
            return None
        options: dict[str, Any] = {}
        if spec.json_column:
            options.update(parse_options(cells[spec.json_column], self.where(row, spec.json_column)))
        for field, column in spec.columns:
            value = option_value(cells[column])
            if value is not None:
                options[field] = value
        for field, value in options.items():
            cell = self.where(row, next((c for f, c in spec.columns if f == field), spec.json_column) or field)
            if field in RESERVED_PARAMS or (field == "n" and value != 1):
                raise JobError(
                    f"{cell}: request option '{field}' cannot be set per row "
                    f"({RESERVED_PARAMS.get(field, 'batchchat keeps one answer per row, so n must be 1')})"
                )
            why = dialect(self.spec.wire).refused(field)
            if why is not None:
                raise JobError(f"{cell}: request option '{field}' cannot go to {self.spec.provider}: {why}")
            problem = option_problem(field, value)  # NaN sent would be null while its key hashed NaN
            if problem:
                raise JobError(f"{cell}: request option '{field}' {problem}, got {value!r}")
        return options

    def check_expected(self, row: int, cell: Any) -> None:
        """An expected answer that could never be compared is bad input, found before any request."""
        if cell is None or (isinstance(cell, str) and not cell.strip()):
            return
        method = self.spec.scoring.method
        where = self.where(row, self.spec.scoring.expected_column or "")
        if method == "regex":
            try:
                re.compile(cell_text(cell) or "")
            except re.error as e:
                raise JobError(f'{where}: not a valid regular expression ({e}); score = "regex" needs one') from None
        elif method == "json_equal" and isinstance(cell, str):
            try:
                json.loads(cell)
            except RecursionError:
                raise JobError(f'{where}: JSON nested too deeply to read; score = "json_equal" compares JSON') from None
            except json.JSONDecodeError as e:
                raise JobError(f'{where}: not valid JSON ({e.msg}); score = "json_equal" compares JSON') from None

    def where(self, row: int, column: str) -> str:
        return f"{self.source_name}, row {row + 1}, column '{column}'"


def option_value(cell: Any) -> Any:
    """A request option from a cell. CSV cells are text, so text is read as JSON when it parses:
    "256" is the number 256, "true" is true, and anything else stays text. Empty means unset."""
    if isinstance(cell, str):
        cell = cell.strip()
        if not cell:
            return None
        try:
            return json.loads(cell)
        except (json.JSONDecodeError, RecursionError):
            return cell
    return cell


def json_cell(cell: Any, where: str, expected: str) -> Any:
    """A cell's JSON value: text is parsed, a list or struct (from Parquet or JSONL) is taken as
    it is. An empty cell is None."""
    if not isinstance(cell, str):
        return cell
    if not cell.strip():
        return None
    try:
        return json.loads(cell)
    except json.JSONDecodeError as e:
        raise JobError(f"{where}: not valid JSON ({e.msg} at character {e.pos + 1}); {expected}") from None
    except RecursionError:
        raise JobError(f"{where}: JSON nested too deeply to read; {expected}") from None


def parse_options(cell: Any, where: str) -> dict[str, Any]:
    """Request options from a JSON-object cell; empty is none."""
    cell = json_cell(cell, where, 'expected an object like {"max_tokens": 64}')
    if cell is None:
        return {}
    if not isinstance(cell, dict):
        raise JobError(f"{where}: expected a JSON object of request options, got {type(cell).__name__}")
    return {k: v for k, v in cell.items() if v is not None}


def parse_turns(cell: Any, where: str) -> tuple[str, ...]:
    """A scripted conversation's user turns: a JSON list of texts."""
    cell = json_cell(cell, where, 'expected a list of user turns like ["Hi", "And then?"]')
    if cell is None:
        return ()
    if not isinstance(cell, list) or not all(isinstance(t, str) and t.strip() for t in cell):
        raise JobError(f"{where}: expected a JSON list of non-empty user turns (texts), got {cell!r}"[:300])
    problem = not_json(cell)
    if problem is not None:
        raise JobError(f"{where}: {problem}")
    return tuple(cell)


def parse_messages(cell: Any, where: str) -> list[dict[str, Any]]:
    """A conversation from a cell: JSON text, or a list already (Parquet lists, JSONL arrays)."""
    cell = json_cell(cell, where, MESSAGES_HELP)
    if cell is None:
        return []
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
        problem = not_json(message)  # a date from a Parquet struct, NaN from JSON text: no request has them
        if problem is not None:
            raise JobError(f"{where}: message {n} {problem}")
        messages.append(message)
    return messages


def missing_column(source: str, name: str, role: str, columns: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(columns), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if not columns:
        return f"{source} has no column '{name}' ({role}); it has no columns at all"
    shown = ", ".join(map(repr, columns[:20])) + (", ..." if len(columns) > 20 else "")
    return f"{source} has no column '{name}' ({role}); its columns are {shown}{hint}"
