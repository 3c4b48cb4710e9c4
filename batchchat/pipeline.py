"""A run's stages after its plan, shared by every kind of run (a file, a DataFrame): the executor
answers the plan's work into the store, then the output is assembled from the input and the
store. Also what a run gives back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .executors.base import Ending, Executor, Ledger, Work
from .journal import Scope, Store
from .records import ERROR, OK
from .stats import RowTally, Stats, Summary

if TYPE_CHECKING:
    import pandas as pd

    from .plan import Rows, Setup
    from .progress import Observer
    from .source import TableSource
    from .spec import Job


@dataclass(frozen=True)
class RunResult:
    """What a run did: its summary, and the output file it wrote, or the frame (``run`` of a
    DataFrame)."""

    output: Path | None
    summary: Summary
    frame: pd.DataFrame | None = None

    @property
    def exit_code(self) -> int:
        """0 when every row is ok, 1 when some rows ended in error or were left pending (the
        cost cap stopped the run)."""
        return 0 if self.summary.errors == 0 and self.summary.pending == 0 else 1


def journal_scope(job: Job) -> Scope:
    """A stored answer is reused only for a request to the same endpoint, judged by the same checks."""
    return Scope(job.endpoint.identity, job.answers.signature)


async def execute(executor: Executor, setup: Setup, source: TableSource, rows: Rows, store: Store, stats: Stats,
                  observer: Observer) -> Ending:  # fmt: skip
    """The plan's work, answered by ``executor`` into ``store``."""
    store.begin()
    builder = setup.builder
    work = Work(builder.requests(source, rows.keys, rows.sends), stats.total, builder.spec.turn_key)
    return await executor.execute(work, Ledger(store, stats, observer, setup.check))


def finished(tally: RowTally) -> int:
    """Rows of the output that ended (ok or error), not pending."""
    return tally.statuses[OK] + tally.statuses[ERROR]
