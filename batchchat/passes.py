"""The passes over the input: the plan before sending, and the assembly of the output after.

Both read the input batch by batch. The plan pass builds every output row's request once, checks
every cell that could fail, and works out each row's key; the assembly pass joins the input with
the store of finished requests by those keys and derives the columns a job adds (label, ``out_``
fields, score), counting per model and variant for the summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .answers import AnswerCheck, Derived
from .errors import INVALID_INPUT, InputChanged, JobError
from .job import Job
from .journal import Journal, MemoryStore
from .keys import RowKeys
from .prompts import RequestBuilder
from .records import OK, PENDING, ChatRequest, InvalidRow, RowOutcome
from .source import TableSource
from .stats import RowTally

if TYPE_CHECKING:
    import pyarrow as pa

    Store = Journal | MemoryStore

SHOWN_INVALID_ROWS = 5


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
    reasked: int = 0  # stored answers that fail the job's checks, with re-asks to go
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


def derived_columns(job: Job) -> Derived:
    return Derived(
        answers=job.answers,
        scoring=job.scoring,
        variants=bool(job.variants),
        transcripts=job.prompt.turns_column is not None,
        prices=dict(job.prices),
    )


def stale_outcomes(store: Store, keys: Iterable[str], check: AnswerCheck) -> dict[str, RowOutcome]:
    """The stored outcomes of ``keys`` that were judged by other checks than the job's, judged
    again. Only answers need it: a failed request stays failed whatever the checks, and without
    checks an ``ok`` answer stays ``ok``."""
    if not store.has_stale:
        return {}
    checked = check.answers.checked
    stale = [key for key in keys if store.stale(key) and (checked or store.failed(key))]
    return {key: check.rejudge(stored) for key, stored in store.get_many(stale).items()}


def plan(job: Job, source: TableSource, builder: RequestBuilder, store: Store, output: Path | None,
         endpoint: str) -> tuple[Plan, Rows]:  # fmt: skip
    """One pass over every row: finds bad cells and empty prompts before any request, works out
    each row's key once, and counts what is answered already and what rows can share."""
    rows = Rows(RowKeys(), {}, bytearray(), bytearray())
    done = reasked = 0
    seen: set[str] = set()
    retry_errors = job.resume.retry_errors
    check = AnswerCheck(job.answers)
    input_rows = 0
    for batch, items in builder.rows(source):
        input_rows += batch.num_rows
        judged = stale_outcomes(store, (i.key for i in items if isinstance(i, ChatRequest) and i.key in store), check)
        for item in items:
            first = send = False
            if isinstance(item, InvalidRow):
                rows.invalid[item.row] = item.reason
                rows.keys.append(None)
            else:
                key = item.key
                rows.keys.append(key)
                first = key not in seen
                seen.add(key)
                again = judged.get(key)
                if key not in store:
                    send = first
                elif (again.status == PENDING) if again is not None else store.unfinished(key):
                    send = first  # an answer the checks reject, with re-asks to go
                    reasked += first
                elif retry_errors and (again.status != OK if again is not None else store.failed(key)):
                    send = first
                else:
                    done += 1
            rows.first.append(first)
            rows.sends.append(send)
    if input_rows == 0:
        raise JobError(f"{source.name} has no rows (only a header, or nothing); there is nothing to send")
    fanout = builder.fanout
    invalid_inputs = sorted({row // fanout + 1 for row in rows.invalid})
    return Plan(
        source=source.name,
        rows=len(rows.keys),
        invalid_rows=len(rows.invalid),
        invalid_inputs=len(invalid_inputs),
        first_invalid=tuple(invalid_inputs[:SHOWN_INVALID_ROWS]),
        done_rows=done,
        to_send=rows.sends.count(1),
        endpoint=endpoint,
        output=output,
        input_rows=input_rows,
        models=len(job.models),
        variants=len(job.variants),
        reasked=reasked,
        legacy=store.legacy,
        assumed_endpoint=store.assumed_endpoint,
        elsewhere=tuple(sorted(store.elsewhere.items())),
        damaged_records=store.invalid,
        limit=job.limit,
    ), rows


Assembled = tuple["pa.RecordBatch", list[RowOutcome], dict[str, list[Any]]]


def row_outcomes(
    source: TableSource, rows: Rows, builder: RequestBuilder, store: Store, tally: RowTally, derived: Derived
) -> Iterator[Assembled]:
    """Each input batch with the outcome of each of its output rows (status ``pending`` for a row
    not finished) and the cells of the columns the job derives from answers."""
    fanout = builder.fanout
    slots = builder.slots
    expected_column = builder.scoring.expected_column
    names = [name for name, _ in derived.columns()]
    derives = bool(derived.out_fields or derived.answers.labels or derived.scoring.expected_column)
    check = AnswerCheck(derived.answers)
    start = 0
    for batch in source.batches():
        first, end = start * fanout, (start + batch.num_rows) * fanout
        if end > len(rows.keys):
            raise InputChanged(source.name, "it has more rows than when the run began")
        keys = [rows.keys[row] for row in range(first, end)]
        records = store.get_many(key for key in keys if key is not None)
        if store.has_stale:  # answers judged by other checks are judged by the job's
            records.update(stale_outcomes(store, records, check))
        expected = batch.column(expected_column).to_pylist() if expected_column else None
        outcomes: list[RowOutcome] = []
        extras: dict[str, list[Any]] = {name: [] for name in names}
        for row, key in enumerate(keys, first):
            slot = slots[row % fanout]
            if key is None:
                outcome = RowOutcome.failed(
                    row, key=None, model=slot.model, error_type=INVALID_INPUT, error=rows.invalid[row], attempts=0
                )
            else:
                outcome = records.get(key) or RowOutcome(row, key, PENDING, 0, slot.model)
                if outcome.status == PENDING:  # not sent, or an answer with re-asks still to go
                    outcome = RowOutcome(row, key, PENDING, 0, slot.model)
            cells = (
                derived.values(
                    outcome.status,
                    outcome.response,
                    outcome.error_type,
                    expected[row // fanout - start] if expected is not None else None,
                )
                if derives
                else {}
            )
            cells["cost"] = derived.cost(outcome, slot.model, shared=not rows.first[row])
            if derived.variants:
                cells["variant"] = slot.variant
            if derived.transcripts:
                cells["transcript"] = outcome.transcript
            for name in names:
                extras[name].append(cells.get(name))
            tally.add_row(outcome, (slot.model, slot.variant), cells.get("score"), bool(rows.first[row]),
                          cells["cost"], cells.get("label"))  # fmt: skip
            if outcome.status == OK and outcome.ttft_s is None and key is not None and store.earlier(key):
                tally.earlier_without_ttft += 1
            outcomes.append(outcome)
        yield batch, outcomes, extras
        start += batch.num_rows
