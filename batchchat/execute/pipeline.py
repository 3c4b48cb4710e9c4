"""A run's stages, shared by every kind of run (a file, a DataFrame): the plan, the executor
answering the plan's work into the store, the assembly of the output from the input and the
store, the summary. Also what a run gives back."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import JobError
from ..core.records import ERROR, OK, PENDING, ChatRequest
from ..core.words import plural
from ..job.spec import describe
from ..output.assemble import Assembled, assemble
from ..plan.rows import watched
from ..store.files import reused_journals
from ..store.journal import Journal, JournalSet, Scope, Store
from ..store.stats import RowTally, Stats, Summary
from .base import Elsewhere, Ending, Executor, Ledger, Work

if TYPE_CHECKING:
    import pandas as pd

    from ..input.source import TableSource
    from ..job.endpoint import Endpoint
    from ..job.spec import Answers, Job
    from ..output.progress import Observer
    from ..plan.plan import Plan, Rows, Setup


@dataclass(frozen=True)
class RunResult:
    """What a run did: its summary, and the output file it wrote, or the frame (``run`` of a
    DataFrame)."""

    output: Path | None
    summary: Summary
    frame: pd.DataFrame | None = None
    ending: Ending = Ending.DONE

    @property
    def exit_code(self) -> int:
        """0 when every row is ok, or the rest was handed to provider batches to collect later;
        1 when some rows ended in error or were left pending (the cost cap stopped the run)."""
        if self.ending is Ending.DETACHED:
            return 0 if self.summary.errors == 0 else 1
        return 0 if self.summary.errors == 0 and self.summary.pending == 0 else 1


def journal_scope(endpoint: Endpoint, answers: Answers) -> Scope:
    """A stored answer is reused only for a request to the same endpoint, judged by the same checks."""
    return Scope(endpoint.identity, answers.signature)


def under_way(job: Job, store: Store) -> Elsewhere:
    """What provider batches of earlier runs left running for this output. A job that does not
    use them is refused: sent live, those requests would be paid for twice."""
    elsewhere = Elsewhere.of(store)
    running = elsewhere.running
    if running and not job.batch.enabled:
        names = job.names
        raise JobError(
            f"provider batches of this output are still running ({plural(len(running), 'file')} of requests "
            f"submitted with {names('batch_api')}): collect them with {names('batch_api')}, or cancel them with "
            f"{names('batch_api')} {names('cancel')}, before running without it"
        )
    return elsewhere


def with_waiting(plan: Plan, rows: Rows, elsewhere: Elsewhere) -> Plan:
    """``plan``, counting which of its requests to send already wait in provider batches (they
    are collected, not sent again)."""
    if not elsewhere.running:
        return plan
    waiting = elsewhere.waiting
    sent = sum(1 for row in range(len(rows.keys)) if rows.sends[row] and rows.keys[row] in waiting)
    return replace(plan, waiting=sent)


def open_store(job: Job, journal: Path, parts: Path | None, *, read_only: bool = False,
               forget: bool = False) -> JournalSet:  # fmt: skip
    """A job's store: its output's journal, the parts beside it that Ray workers write, and the
    journals of the outputs it reuses (their answers count as earlier runs'). Every kind of run
    opens it this one way, so a dry run plans against what the run would find (it read no reused
    journal, and counted their answers as requests to send). ``read_only``: a look that may run
    while another run writes; ``forget``: the output's own journal and parts taken as gone (a dry
    run of a restart, which would delete them)."""
    main = Journal(journal, journal_scope(job.endpoint, job.answers), read_only=read_only, empty=forget)
    return JournalSet(main, None if forget else parts, reused=reused_journals(job))


class Stages:
    """One run's stages over its input and store, in order: ``plan``, ``execute``, ``assemble``,
    ``summary``. Every kind of run (a file, a DataFrame) goes through these, so they count, stop
    and sum up alike; what differs is where the assembled rows go."""

    def __init__(self, job: Job, setup: Setup, source: TableSource, store: Store, observer: Observer) -> None:
        self.job = job
        self.setup = setup
        self.source = source
        self.store = store
        self.observer = observer
        self.stats = Stats(0, job.paid_prices)
        self.rows: Rows | None = None
        self.ending = Ending.DONE
        self.wall_s = 0.0
        self.began = time.time()  # epoch: what the journal's steps since then are this run's
        self.running = False  # provider batches of earlier runs to collect

    def plan(self, output: Path | None) -> Plan:
        elsewhere = under_way(self.job, self.store)
        plan, self.rows = self.setup.plan(self.source, self.store, output)
        self.stats.total = plan.to_send
        self.running = bool(elsewhere.running)
        return with_waiting(plan, self.rows, elsewhere)

    async def execute(self, executor: Executor) -> Ending:
        """The plan's work, answered by ``executor`` into the store (nothing to do: done)."""
        assert self.rows is not None, "plan first"
        started = time.perf_counter()
        self.began = time.time()
        self.store.adopt(self.rows.keys[row] for row in range(len(self.rows.keys)))  # a trial's, written elsewhere
        try:
            if self.stats.total or self.running:  # batches still running are collected
                self.store.describe(describe(self.job))
                self.store.begin()
                builder = self.setup.builder
                work = Work(_Requests(self.setup, self.source, self.rows), builder.spec.turn_key, self.rows.expected)
                ledger = Ledger(self.store, self.stats, self.observer, self.setup.check)
                self.ending = await executor.execute(work, ledger)
        finally:
            self.wall_s = time.perf_counter() - started
        return self.ending

    def assemble(self, tally: RowTally) -> Iterator[Assembled]:
        assert self.rows is not None, "plan first"
        slots = self.setup.builder.spec.groups
        waiting = Elsewhere.of(self.store).waiting  # as the run left them
        return assemble(self.source, self.rows, slots, self.store, tally, self.setup.derived, waiting)

    def summary(self, tally: RowTally) -> Summary:
        job = self.job
        capped = self.ending is Ending.BUDGET and tally.statuses[PENDING] > 0  # rows the cap left unsent
        batches = Elsewhere.times(self.store, self.began) if job.batch.enabled else None
        return self.stats.summary(self.wall_s, tally, cost_cap=job.max_cost, budget_stopped=capped,
                                  streamed=job.stream, batches=batches)  # fmt: skip


class _Requests:
    """The plan's requests to send, on each pass over them (an engine that goes in rounds passes
    more than once): the first ones as the plan kept them, the rest (past what it keeps) built
    again from the input. Keeping the first ones, not none, makes a large input cost the more
    the larger it is, not all at once past a size."""

    def __init__(self, setup: Setup, source: TableSource, rows: Rows) -> None:
        self.setup, self.source, self.rows = setup, source, rows

    def __iter__(self) -> Iterator[ChatRequest]:
        rows = self.rows
        sends = rows.sends  # read as it is now: a Ray block clears the rows another block claimed
        kept = watched((r for r in rows.kept if sends[r.row]), self.source)
        if rows.built_from is None:
            return kept
        return itertools.chain(kept, self.setup.builder.requests(self.source, rows.keys, sends, rows.built_from))


def finished(tally: RowTally) -> int:
    """Rows of the output that ended (ok or error), not pending."""
    return tally.statuses[OK] + tally.statuses[ERROR]
