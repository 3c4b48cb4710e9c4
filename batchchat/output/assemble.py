"""Assembly: the input joined with the store, batch by batch, into the output's rows.

Each output row takes the outcome stored under its key (``pending`` when there is none yet),
judged again where it was judged by other checks, and the cells the job derives from it; the
rows are counted for the summary as they pass. Nothing here sends or writes: the sink writes the
batches, whatever executor filled the store.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import INVALID_INPUT, InputChanged
from ..core.records import OK, PENDING, RowOutcome
from ..plan.answers import AnswerCheck, Derived, derive_batch
from ..plan.plan import Rows, stale_outcomes
from ..store.journal import Store
from ..store.stats import PAID_EARLIER, PAID_RUN, PAID_SHARED, RowTally

if TYPE_CHECKING:
    import pyarrow as pa

    from ..input.source import TableSource

# An input batch, the outcome of each of its output rows, and the derived cells by column.
Assembled = tuple["pa.RecordBatch", list[RowOutcome], dict[str, list[Any]]]


def assemble(source: TableSource, rows: Rows, slots: Sequence[tuple[str, str | None]], store: Store,
             tally: RowTally, derived: Derived, waiting: Container[str] = ()) -> Iterator[Assembled]:  # fmt: skip
    """Each input batch with the outcome of each of its output rows, one per (model, variant) of
    ``slots``, and the cells of the columns the job derives from answers. A request ``waiting``
    in a provider batch is ``pending``, whatever an earlier run stored for it."""
    fanout = len(slots)
    check = AnswerCheck(derived.answers)
    start = 0
    for batch in source.batches():
        first, end = start * fanout, (start + batch.num_rows) * fanout
        if end > len(rows.keys):
            raise InputChanged(source.name, "it has more rows than when the run began")
        keys = [rows.keys[row] for row in range(first, end)]
        store.prefetch(key for key in keys if key is not None)  # one search a batch: get_many, then who paid
        records = store.get_many(key for key in keys if key is not None)
        if store.has_stale:  # answers judged by other checks are judged by the job's
            records.update(stale_outcomes(store, records, check))
        outcomes: list[RowOutcome] = []
        for row, key in enumerate(keys, first):
            model = slots[row % fanout][0]
            if key is None:
                outcome = RowOutcome.failed(
                    row, key=None, model=model, error_type=INVALID_INPUT, error=rows.invalid[row], attempts=0
                )
            else:
                outcome = records.get(key) or RowOutcome(row, key, PENDING, 0, model)
                if outcome.status == PENDING or key in waiting:  # not sent, a re-ask to go, or in a batch
                    outcome = RowOutcome(row, key, PENDING, 0, model)
            outcomes.append(outcome)
        paid = [_payer(outcome, bool(rows.first[row]), store) for row, outcome in enumerate(outcomes, first)]
        cells = derive_batch(derived, batch, outcomes, slots, paid)
        get = cells.get
        scores, labels, costs = get("score"), get("label"), cells["cost"]
        for i, outcome in enumerate(outcomes):
            row = first + i
            model, variant = slots[row % fanout]
            tally.add_row(outcome.status, outcome.error_type, outcome.model or model, variant,
                          prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                          cost=costs[i], paid=paid[i], score=scores[i] if scores else None,
                          label=labels[i] if labels else None, latency_s=outcome.latency_s)  # fmt: skip
            if paid[i] == PAID_EARLIER and outcome.status == OK and outcome.ttft_s is None:
                tally.earlier_without_ttft += 1
        yield batch, outcomes, cells
        start += batch.num_rows


def _payer(outcome: RowOutcome, first: bool, store: Store) -> str | None:
    """Who paid for a row's request: None when it asked nothing (pending, or input it could not
    send); ``shared`` when an identical row of the output asked it; else this run or an earlier."""
    key = outcome.key
    if key is None or outcome.status == PENDING:
        return None
    if not first:
        return PAID_SHARED
    return PAID_EARLIER if store.earlier(key) else PAID_RUN
