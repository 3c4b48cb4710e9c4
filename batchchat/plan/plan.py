"""The plan: one pass over the input, before any request, that finds what every output row will
ask and what is still to send.

The pass builds every output row's request once, checks every cell that could fail, works out
each row's key, and looks each key up in the store: answered by an earlier run (nothing to
send), shared with an identical row (sent once), or to send. ``Setup`` gathers what a job's
row stages need for one input, and is the one way every kind of run (a file, a DataFrame, a dry
run) gets from a job to its plan.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import JobError
from ..core.keys import RowKeys, messages_key
from ..core.records import OK, OUTPUT_COLUMNS, PENDING, ChatRequest, InvalidRow, RowOutcome
from ..core.template import cell_text
from ..job.spec import Job
from ..store.journal import Store
from .answers import AnswerCheck, Derived
from .rows import RequestBuilder, RowSpec

if TYPE_CHECKING:
    from ..input.source import TableSource

SHOWN_INVALID_ROWS = 5
# The requests the plan builds are kept for the sending pass up to this estimated size
# (``_size`` errs high: about 35,000 short prompts, 16 MB in fact): building and hashing each
# again from the input is a tenth of the CPU a request costs. Those past it are built again, a
# row at a time, as they are sent; the first ones are still kept.
KEPT_BYTES = 32 << 20


@dataclass(frozen=True)
class Plan:
    """What a job is about to do, known before its first request."""

    source: str
    rows: int  # output rows: input rows x models x variants
    invalid_rows: int  # output rows with nothing to send
    invalid_inputs: int  # the input rows they come from
    first_invalid: tuple[int, ...]  # 1-based input row numbers of the first few
    done_rows: int  # rows whose request an earlier run already finished (the journal)
    to_send: int  # requests this run sends: rows not done, each distinct request once
    endpoint: str
    output: Path | None
    input_rows: int = 0
    models: int = 1
    variants: int = 0
    reasked: int = 0  # stored answers that failed the job's checks, with re-asks to go
    rejudged: int = 0  # stored answers that fail the job's changed checks, to be asked again
    waiting: int = 0  # of those to send, requests waiting in provider batches submitted before
    legacy: int = 0  # journal records from before endpoints were recorded, taken as this endpoint's
    assumed_endpoint: str | None = None  # set when this run made that assumption (said once)
    elsewhere: tuple[tuple[str, int], ...] = ()  # (endpoint, requests answered there, not here)
    damaged_records: int = 0  # journal records of the wrong shape or types, skipped
    limit: int | None = None  # only the first input rows were taken (--limit)

    @property
    def shared_rows(self) -> int:
        """Rows that will take the answer of an identical request instead of sending their own."""
        return self.rows - self.invalid_rows - self.done_rows - self.to_send


@dataclass
class Rows:
    """What the plan pass learned of every output row: its key, or why it has none, and which
    rows send (one byte a row each), so the sending pass needs no set of keys and no journal
    lookups, and the summary counts a shared request's tokens once."""

    keys: RowKeys
    invalid: dict[int, str]  # output row -> why it has nothing to send
    sends: bytearray  # the first row asking for each request still to be answered
    first: bytearray  # the first row asking for each request
    kept: list[ChatRequest] = field(default_factory=list)  # the first requests to send, as the plan built them
    built_from: int | None = None  # the first row whose request was not kept (None: every one was)
    # For the simulator of an offline evaluation (provider sim, an expected column): each
    # request's expected answer, by its conversation, so the models it plays get some right.
    expected: dict[str, str] | None = None


@dataclass(frozen=True)
class Setup:
    """A job's row stages for one input: how rows become requests, how answers are judged and what
    the output derives from them, and the plan's own settings. Making one checks the input's
    columns: every column a row is read from exists, and none is named like an output column."""

    builder: RequestBuilder
    derived: Derived
    check: AnswerCheck
    retry_errors: bool  # requests that ended in error are sent again
    endpoint: str  # where requests go, as messages name it
    models: int
    variants: int
    limit: int | None
    expects: str | None = None  # the expected column the simulator is told of (``Rows.expected``)

    @classmethod
    def of(cls, job: Job, columns: Sequence[str], source_name: str) -> Setup:
        derived = Derived.of(job)
        check_columns(columns, source_name, [name for name, _ in derived.columns()])
        return cls(
            builder=RequestBuilder(RowSpec.of(job, columns), columns, source_name, job.names),
            derived=derived,
            check=AnswerCheck(job.answers),
            retry_errors=job.resume.retry_errors,
            endpoint=job.endpoint.shown,
            models=len(job.models),
            variants=len(job.variants),
            limit=job.limit,
            expects=job.scoring.expected_column if job.endpoint.provider == "sim" and job.simulator.expected is None
            else None,
        )

    def plan(self, source: TableSource, store: Store, output: Path | None) -> tuple[Plan, Rows]:
        """One pass over every row: finds bad cells and empty prompts before any request, works
        out each row's key once, and counts what is answered already and what rows can share."""
        keys = RowKeys()
        invalid: dict[int, str] = {}
        wants = bytearray()  # rows to send if they are the first asking for their request
        reasks = bytearray()  # ... and of those, the ones whose stored answer the checks reject
        changed = bytearray()  # ... and of those, the ones the job's changed checks reject
        done = 0
        retry_errors = self.retry_errors
        input_rows = 0
        kept: list[ChatRequest] = []  # up to KEPT_BYTES of them; the rest are built again when sent
        kept_bytes = 0
        built_from: int | None = None
        expects = self.expects
        expected: dict[str, str] | None = {} if expects is not None else None
        fanout = self.builder.fanout
        for batch, items in self.builder.rows(source):
            input_rows += batch.num_rows
            if expects is not None and expected is not None:
                _expected_of(batch.column(expects).to_pylist(), items, fanout, expected)
            store.prefetch(i.key for i in items if isinstance(i, ChatRequest))  # one search a batch, not one a row
            stored = (i.key for i in items if isinstance(i, ChatRequest) and i.key in store)
            judged = stale_outcomes(store, stored, self.check)
            for item in items:
                want = reask = rejudged = False
                if isinstance(item, InvalidRow):
                    invalid[item.row] = item.reason
                    keys.append(None)
                else:
                    key = item.key
                    keys.append(key)
                    if built_from is None:
                        kept_bytes += _size(item)
                        if kept_bytes > KEPT_BYTES:
                            built_from = item.row  # this one and those after: built again when sent
                        else:
                            kept.append(item)
                    again = judged.get(key)
                    if key not in store:
                        want = True
                    elif (again.status == PENDING) if again is not None else store.unfinished(key):
                        want = reask = True  # an answer the checks reject, with re-asks to go
                        rejudged = again is not None  # judged again: by other checks when it was stored
                    elif retry_errors and (again.status != OK if again is not None else store.failed(key)):
                        want = True
                    else:
                        done += 1
                wants.append(want)
                reasks.append(reask)
                changed.append(rejudged)
        # Which row is the first asking for each request: one sort of the keys at the end, not a
        # set of every key held through the pass (ten million keys in a set take 1.5 GB).
        first = keys.firsts()
        sends = _both(first, wants)
        reasked = _both(first, reasks).count(1)
        changed_checks = _both(first, changed).count(1)
        rows = Rows(keys, invalid, sends, first, [r for r in kept if sends[r.row]], built_from, expected)
        if input_rows == 0:
            raise JobError(f"{source.name} has no rows (only a header, or nothing); there is nothing to send")
        invalid_inputs = sorted({row // fanout + 1 for row in rows.invalid})
        return Plan(
            source=source.name,
            rows=len(rows.keys),
            invalid_rows=len(rows.invalid),
            invalid_inputs=len(invalid_inputs),
            first_invalid=tuple(invalid_inputs[:SHOWN_INVALID_ROWS]),
            done_rows=done,
            to_send=rows.sends.count(1),
            endpoint=self.endpoint,
            output=output,
            input_rows=input_rows,
            models=self.models,
            variants=self.variants,
            reasked=reasked - changed_checks,
            rejudged=changed_checks,
            legacy=store.legacy,
            assumed_endpoint=store.assumed_endpoint,
            elsewhere=tuple(sorted(store.elsewhere.items())),
            damaged_records=store.invalid,
            limit=self.limit,
        ), rows


def _expected_of(values: list[Any], items: Sequence[ChatRequest | InvalidRow], fanout: int,
                 found: dict[str, str]) -> None:  # fmt: skip
    """The expected answers of a batch's rows, by conversation (``Rows.expected``)."""
    for i, item in enumerate(items):
        value = values[i // fanout]
        if isinstance(item, ChatRequest) and not item.turns and value is not None:
            found.setdefault(messages_key(item.messages), cell_text(value))


def check_columns(columns: Sequence[str], source_name: str, added: Sequence[str] = ()) -> None:
    """An input column named like an outcome column would make the output ambiguous."""
    clashes = [name for name in columns if name in OUTPUT_COLUMNS or name in added]
    if clashes:
        raise JobError(
            f"{source_name} has column(s) {', '.join(map(repr, clashes))}, which batchchat adds to "
            "the output; rename them in the input"
        )


def _size(request: ChatRequest) -> int:
    """About what a built request takes in memory, to keep the kept ones under ``KEPT_BYTES``:
    its objects and every text of its messages, options and turns (shared objects counted for
    each request that holds them: more, never less). Messages of text are counted here, not by
    ``_footprint``'s call a value: that took a quarter of the plan's time a row."""
    messages = request.messages
    size = 200 + _sizeof(messages)
    for message in messages:
        if type(message) is dict:
            size += _sizeof(message)
            for k, v in message.items():
                size += _sizeof(k) if type(k) is str else _footprint(k)
                size += _sizeof(v) if type(v) is str else _footprint(v)
        else:
            size += _footprint(message)
    if request.params:
        size += _footprint(request.params)
    if request.turns:
        size += _footprint(request.turns)
    return size


def _footprint(value: Any) -> int:
    """CPython's bytes for a JSON-like value: each text, object and list its own size
    (``sys.getsizeof``), other values 32. A text takes one, two or four bytes a character as its
    widest needs: counting four for any text not ASCII held half of a real table's prompts
    (accented, CJK) at twice their size, and built and hashed them again when sent."""
    if isinstance(value, str):
        return _sizeof(value)
    if isinstance(value, dict):
        return _sizeof(value) + sum([_footprint(k) + _footprint(v) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return _sizeof(value) + sum([_footprint(v) for v in value])
    return 32


_sizeof = sys.getsizeof


def _both(a: bytearray, b: bytearray) -> bytearray:
    """Row flags (one byte, 0 or 1, a row) set in both; as whole numbers, in one step."""
    both = int.from_bytes(a, "little") & int.from_bytes(b, "little")
    return bytearray(both.to_bytes(len(a), "little"))


def stale_outcomes(store: Store, keys: Iterable[str], check: AnswerCheck) -> dict[str, RowOutcome]:
    """The stored outcomes of ``keys`` that were judged by other checks than the job's, judged
    again. Only answers need it: a failed request stays failed whatever the checks, and without
    checks an ``ok`` answer stays ``ok``."""
    if not store.has_stale:
        return {}
    checked = check.answers.checked
    stale = [key for key in keys if store.stale(key) and (checked or store.failed(key))]
    return {key: check.rejudge(stored) for key, stored in store.get_many(stale).items()}
