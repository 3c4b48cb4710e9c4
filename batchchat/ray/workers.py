"""A Ray worker: the live engine in a worker process, under the cluster's shared limits, keeping
every answer in a journal part of its own.

``Worker`` answers requests as a local run does (``LiveExecutor``: retries, re-asks, scripted
turns), with the limits leased from the ``SharedLimits`` actor. Its store is its own part,
written as each request finishes (so a driver or another worker dying takes none of it), read
together with the run's journal and the other parts (so a request answered before is not asked
again). ``Answerer`` is the actor a run of a file hands chunks of requests to; ``Blocks`` is the
Ray Data transform ``batchchat.ray.chat`` maps over a dataset's blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import ray

from ..client import ChatClient
from ..core.records import ChatRequest, RowOutcome
from ..execute.base import Ending, Ledger, Work
from ..execute.connect import open_client
from ..execute.live import LiveExecutor
from ..execute.pipeline import Stages
from ..execute.unit import TurnKey
from ..input.source import ArrowSource
from ..job.spec import Job
from ..output.progress import Silent
from ..output.sink import output_batches, output_schema, table_of
from ..plan.answers import AnswerCheck
from ..plan.plan import Setup
from ..store.journal import Journal, JournalSet, MemoryStore, Scope, Store
from ..store.stats import Counters, RowTally, Stats
from .limits import LeasedThrottle

T = TypeVar("T")
CLAIM_WAIT_S = 0.2  # how often a worker looks whether the requests another worker asks are answered


@dataclass(frozen=True)
class Storage:
    """Where a worker's answers go and what it reads: its part in ``parts``, beside ``main``."""

    parts: Path | None  # None: answers kept in memory only (no resume)
    main: Path | None = None
    scope: Scope = field(default_factory=lambda: Scope("unknown"))

    def open(self) -> Store:
        if self.parts is None:
            return MemoryStore()
        self.parts.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:10]}.journal"  # later parts sort later
        own = Journal(self.parts / name, self.scope)
        return JournalSet(own, self.parts, [self.main] if self.main is not None else [])


class Worker:
    """The engine of one worker process; ``share`` is its part of the cluster's concurrency."""

    def __init__(self, job: Job, shared: Any, share: int, storage: Storage) -> None:
        self.job = job
        self.live = replace(LiveExecutor.for_job(job, handle_signals=False), max_cost=None,  # the shared budget
                            limits=replace(job.limits, concurrency=share))  # fmt: skip
        self.throttle = LeasedThrottle(shared, share)
        self.check = AnswerCheck(job.answers)
        self.storage = storage
        self.store: Store | None = None
        self.client: ChatClient | None = None
        self._opened: Any = None
        self._opening = asyncio.Lock()

    async def _open(self) -> tuple[ChatClient, Store]:
        async with self._opening:  # chunks arrive two at a time: one client, one part
            return await self._open_once()

    async def _open_once(self) -> tuple[ChatClient, Store]:
        if self.client is None:
            job = self.job
            self._opened = open_client(job.endpoint, concurrency=self.throttle.concurrency, retry=job.retry,
                                       stream=job.stream, simulator=job.simulator_config)  # fmt: skip
            self.client = await self._opened.__aenter__()
        if self.store is None:
            self.store = self.storage.open()
            self.store.begin()
        return self.client, self.store

    async def answer(self, work: Work, store: Store | None = None) -> tuple[list[RowOutcome], Counters, bool]:
        """The requests of ``work``, each to exactly one outcome in the worker's part (or
        ``store``); (the outcomes, what they cost in counters, whether the budget is spent)."""
        client, own = await self._open()
        finished: list[RowOutcome] = []
        stats = Stats(0, self.job.paid_prices)
        ledger = Ledger(store or own, stats, _Collect(finished), self.check)
        ending = await self.live.send(work, ledger, client.complete, throttle=self.throttle)
        await self.throttle.flush()
        counters, throttle = stats.counters, self.throttle  # the shared throttle's notes, as of its last answer
        counters.paced, counters.last_cut = throttle.paced or counters.paced, throttle.last_cut or counters.last_cut
        counters.crowded = throttle.crowded or counters.crowded
        return finished, counters, ending is Ending.BUDGET or self.throttle.spent

    async def close(self) -> None:
        await self.throttle.close()
        if self._opened is not None:
            await self._opened.__aexit__(None, None, None)
            self._opened = self.client = None
        if self.store is not None:
            self.store.close()
            self.store = None


class _Collect(Silent):
    """An observer that keeps the outcomes a worker finished, to hand them to the driver."""

    def __init__(self, into: list[RowOutcome]) -> None:
        self.into = into

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None:
        self.into.append(replace(outcome, answer=None))  # the answer as received stays in the worker's store


class AnswererImpl:
    """The actor a file run's driver hands chunks of the plan's requests to."""

    def __init__(self, job: Job, shared: Any, share: int, storage: Storage, turn_key: TurnKey) -> None:
        self.worker = Worker(job, shared, share, storage)
        self.turn_key = turn_key

    async def answer(self, requests: Sequence[ChatRequest]) -> tuple[list[RowOutcome], Counters, bool]:
        return await self.worker.answer(Work(list(requests), self.turn_key))

    async def close(self) -> None:
        await self.worker.close()


Answerer = ray.remote(AnswererImpl)


class ClaimsImpl:
    """Which worker asks which request in a dataset run, so identical rows in different blocks
    are asked once: the first to claim a key asks it; the others wait for its answer."""

    def __init__(self) -> None:
        self.claimed: dict[str, float] = {}  # key -> when it was claimed
        self.done: set[str] = set()

    def claim(self, keys: Sequence[str], stale_s: float) -> list[bool]:
        """For each key, whether the caller asks it (claims older than ``stale_s`` that never
        finished, a worker that died, are taken over)."""
        now = time.monotonic()
        mine = []
        for key in keys:
            taken = key in self.done or (key in self.claimed and now - self.claimed[key] < stale_s)
            if not taken:
                self.claimed[key] = now
            mine.append(not taken)
        return mine

    def finish(self, keys: Sequence[str]) -> None:
        self.done.update(keys)

    def finished(self, keys: Sequence[str]) -> bool:
        return all(key in self.done for key in keys)


Claims = ray.remote(ClaimsImpl)


class Blocks:
    """The Ray Data transform of ``batchchat.ray.chat``: each block planned, answered and
    assembled as a local run does a file, the output columns added to its rows."""

    def __init__(self, job: Job, shared: Any, claims: Any, share: int, storage: Storage) -> None:
        self.job = job
        self.claims = claims
        self.worker = Worker(job, shared, share, storage)
        self.loop = asyncio.new_event_loop()  # one loop for the worker's life: its client lives on it
        self.thread = threading.Thread(target=self.loop.run_forever, name="batchchat-ray", daemon=True)
        self.thread.start()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __call__(self, block: Any) -> Any:
        return self._run(self._block(block))

    async def _block(self, block: Any) -> Any:
        job = self.job
        source = ArrowSource(block, "the dataset")
        setup = Setup.of(job, source.columns, source.name)
        _, store = await self.worker._open()
        stages = Stages(job, setup, source, store, Silent())
        stages.plan(None)
        rows = stages.rows
        assert rows is not None
        sending = [row for row, send in enumerate(rows.sends) if send]
        keys = [rows.keys[row] or "" for row in sending]
        stale_s = 2 * job.retry.timeout_s * job.retry.max_attempts + 60
        mine = await self.claims.claim.remote(keys, stale_s) if self.claims is not None else [True] * len(keys)
        theirs = sorted({key for key, own in zip(keys, mine, strict=True) if not own})
        for row, own in zip(sending, mine, strict=True):
            rows.sends[row] = own  # another block asks it: its answer is read from the journal
        stages.stats.total = sum(mine)
        await stages.execute(_BlockEngine(self.worker))
        if self.claims is not None:
            await self.claims.finish.remote([key for key, own in zip(keys, mine, strict=True) if own])
        while theirs and self.claims is not None and not await self.claims.finished.remote(theirs):
            await asyncio.sleep(CLAIM_WAIT_S)
        store.refresh()
        tally = RowTally()
        schema = output_schema(source, setup.derived)
        return table_of(output_batches(stages.assemble(tally), schema, setup.builder.fanout, source.for_output), schema)

    def __del__(self) -> None:
        if self.loop.is_running():
            with contextlib.suppress(Exception):  # a worker going away: its part is flushed already
                self._run(self.worker.close())
            self.loop.call_soon_threadsafe(self.loop.stop)


class _BlockEngine:
    """An executor over one worker: what ``Stages.execute`` runs a block's requests through."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def execute(self, work: Work, ledger: Ledger) -> Ending:
        outcomes, _, spent = await self.worker.answer(work, ledger.store)
        for outcome in outcomes:
            ledger.stats.add(outcome)
        return Ending.BUDGET if spent else Ending.DONE

