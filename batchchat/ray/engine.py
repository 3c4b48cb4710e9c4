"""The Ray engine of a file run (``batchchat run --ray``): the driver plans and assembles as a
local run does; Ray workers answer the plan's requests.

The driver hands the workers chunks of requests, two in flight per worker, and takes back their
outcomes to count and show them. Each worker keeps its answers in a journal part of its own
beside the output as they finish (``workers.Worker``), so killing the driver or a worker loses
at most the requests in flight, and the output is assembled from the journal and every part.
All workers share one set of limits (``limits.SharedLimits``), so ``--concurrency``, ``--rpm``,
``--tpm`` and ``--max-cost`` are the cluster's totals.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray

from ..core.errors import BatchchatError, InputChanged
from ..core.records import ChatRequest
from ..execute.base import Ending, Ledger, Work
from ..execute.signals import graceful_stop
from ..job.spec import Job, RayCluster
from ..store.journal import JournalSet, Scope
from .limits import SharedLimits
from .workers import Answerer, Storage


def connect(cluster: RayCluster) -> int:
    """Ray started for the run, or the cluster at its address; the CPUs it has."""
    if not ray.is_initialized():
        address = None if cluster.address == "local" else cluster.address
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    resources: Callable[[], dict[str, float]] = ray.cluster_resources  # ray's own is untyped
    return max(1, int(resources().get("CPU", 1)))


def sizes(job: Job, cpus: int) -> tuple[int, int]:
    """(workers, each one's share of the places in flight): the shares add up to at most the
    job's concurrency, however many workers."""
    workers = min(job.ray.workers or cpus, job.limits.concurrency)
    return workers, max(1, job.limits.concurrency // workers)


@dataclass(frozen=True)
class RayExecutor:
    job: Job  # workers run the live engine, which takes its parts from the job
    handle_signals: bool = False

    @classmethod
    def for_job(cls, job: Job, *, handle_signals: bool) -> RayExecutor:
        return cls(job, handle_signals)

    async def execute(self, work: Work, ledger: Ledger) -> Ending:
        job = replace(self.job, simulator=work.simulator(self.job.simulator))
        workers, share = sizes(job, connect(job.ray))
        store = ledger.store
        if isinstance(store, JournalSet) and store.folder is not None:
            storage = Storage(store.folder, store.main.path, store.main.scope)
        else:  # a DataFrame run without a journal: answers kept in memory, as locally
            storage = Storage(None, None, Scope("unknown"))
        shared: Any = SharedLimits.options(num_cpus=0).remote(job.limits, job.max_cost, job.paid_prices)
        actors: list[Any] = [Answerer.options(num_cpus=0, scheduling_strategy="SPREAD").remote(job, shared, share, storage,
                                                                                   work.turn_key)
                  for _ in range(workers)]  # fmt: skip
        try:
            return await _Drive(work, ledger, actors, chunk=max(4, 2 * share), grace_s=job.resume.grace_s,
                                handle_signals=self.handle_signals).run()  # fmt: skip
        finally:
            await asyncio.gather(*(actor.close.remote() for actor in actors), return_exceptions=True)
            for actor in [*actors, shared]:
                ray.kill(actor)
            store.refresh()  # the workers' parts, for the assembly


class _Drive:
    """Chunks of requests to the workers, outcomes back to the ledger, until done or stopped."""

    def __init__(self, work: Work, ledger: Ledger, actors: list[Any], *, chunk: int, grace_s: float,
                 handle_signals: bool) -> None:  # fmt: skip
        self.requests: Iterator[ChatRequest] = iter(work.requests)
        self.ledger = ledger
        self.actors = actors
        self.chunk = chunk
        self.grace_s = grace_s
        self.handle_signals = handle_signals
        self.in_flight: dict[asyncio.Future[Any], int] = {}
        self.taking = True
        self.spent = False
        self.changed: InputChanged | None = None
        self.signals = 0

    def _next(self) -> list[ChatRequest]:
        try:
            return list(itertools.islice(self.requests, self.chunk))
        except InputChanged as e:  # the workers finish what they hold, then the run says so
            self.changed, self.taking = e, False
            return []

    def _submit(self, worker: int) -> None:
        if not self.taking:
            return
        chunk = self._next()
        if chunk:
            self.in_flight[asyncio.ensure_future(_get(self.actors[worker].answer.remote(chunk)))] = worker

    async def run(self) -> Ending:
        pumping = asyncio.ensure_future(self._pump())

        def on_signal() -> None:  # no new chunks; those in flight have the grace period
            self.signals += 1
            self.taking = False
            if self.signals == 1:
                self.ledger.stopping(self.grace_s)
                asyncio.get_running_loop().call_later(self.grace_s, pumping.cancel)
            else:
                pumping.cancel()

        try:
            with graceful_stop(on_signal, handle_signals=self.handle_signals):
                await pumping
        except asyncio.CancelledError:
            if not self.signals:
                raise
            return Ending.AT_ONCE if self.signals > 1 else Ending.STOPPED
        finally:
            for future in self.in_flight:
                future.cancel()
        if self.changed is not None:
            raise self.changed
        if self.signals:
            return Ending.STOPPED
        return Ending.BUDGET if self.spent else Ending.DONE

    async def _pump(self) -> None:
        for worker in range(len(self.actors)):
            self._submit(worker)
            self._submit(worker)
        while self.in_flight:
            done, _ = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                worker = self.in_flight.pop(future)
                try:
                    outcomes, counters, spent = future.result()
                except ray.exceptions.RayTaskError as failure:  # a worker's own error, raised here as it was
                    if isinstance(failure.cause, BatchchatError):
                        raise failure.cause from None
                    raise
                for outcome in outcomes:
                    self.ledger.finished_elsewhere(outcome)
                self.ledger.counters.merge(counters)
                if spent:
                    self.spent, self.taking = True, False
                self._submit(worker)


async def _get(reference: Any) -> Any:
    return await reference
