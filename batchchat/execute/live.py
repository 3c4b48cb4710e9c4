"""The live engine: requests sent from this process, as fast as the limits allow.

Workers (the pool) run units of work (``unit.py``: attempts through the throttle, retries,
re-asks, scripted turns) against one HTTP client, under one budget. Each finished unit goes to
the ledger at once (the journal flushes it), so whatever happens next, it is never sent again.

Stopping: Ctrl-C or SIGTERM (where this thread may handle signals) stops the taking of new
requests; those in flight have the grace period to finish, and a second signal abandons them.
An input that changes under the run stops the taking of requests too: those in flight finish
and are kept, then the run raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..core.errors import FatalAPIError, InputChanged, StorageError
from ..core.records import ChatRequest
from ..job.endpoint import Endpoint
from ..job.money import Budget
from ..job.spec import NO_PRICES, Answers, Job, Limits, Prices, RetryPolicy, SimConfig
from ..pacing.throttle import Throttle
from .base import Ending, Ledger, Work
from .connect import open_client
from .pool import drain
from .signals import graceful_stop
from .unit import Asker, Limiter, Resting, Send


@dataclass(frozen=True)
class LiveExecutor:
    """The parts of a job the live engine needs, and whether it may take over Ctrl-C and SIGTERM."""

    endpoint: Endpoint
    limits: Limits = field(default_factory=Limits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stream: bool = False
    answers: Answers = field(default_factory=Answers)
    max_cost: float | None = None
    prices: Prices = field(default_factory=lambda: NO_PRICES)
    simulator: SimConfig = field(default_factory=SimConfig)
    grace_s: float = 10.0
    handle_signals: bool = False

    @classmethod
    def for_job(cls, job: Job, *, handle_signals: bool) -> LiveExecutor:
        return cls(
            endpoint=job.endpoint,
            limits=job.limits,
            retry=job.retry,
            stream=job.stream,
            answers=job.answers,
            max_cost=job.max_cost,
            prices=job.prices,
            simulator=job.simulator_config,
            grace_s=job.resume.grace_s,
            handle_signals=handle_signals,
        )

    async def execute(self, work: Work, ledger: Ledger) -> Ending:
        async with open_client(self.endpoint, concurrency=self.limits.concurrency, retry=self.retry,
                               stream=self.stream, simulator=work.simulator(self.simulator)) as client:  # fmt: skip
            return await self.send(work, ledger, client.complete)

    async def send(self, work: Work, ledger: Ledger, send: Send, throttle: Limiter | None = None) -> Ending:
        """Every request of ``work`` through ``send`` (one attempt at a time); ``throttle``: limits
        shared with other processes (a Ray worker's), instead of this run's own."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signalled = at_once = False
        limits = self.limits
        budget = Budget.of(self.max_cost, self.prices, ledger.counters)
        resting = Resting()
        asker = Asker(
            send,
            max_attempts=self.retry.max_attempts,
            throttle=throttle or Throttle(limits.concurrency, rpm=limits.rpm, tpm=limits.tpm),
            counters=ledger.counters,
            check=ledger.check if self.answers.checked else None,
            invalid_retries=self.answers.invalid_retries,
            budget=budget,
            stop=stop,
            memory=ledger,
            turn_key=work.turn_key,
            resting=resting,
        )
        changed: list[InputChanged] = []

        def requests() -> Iterator[ChatRequest]:
            try:
                yield from work.requests
            except InputChanged as e:
                changed.append(e)
                stop.set()

        draining = drain(requests(), asker.unit, ledger.finished, workers=limits.concurrency, stop=stop,
                         budget=budget, resting=resting)  # fmt: skip
        sending = asyncio.ensure_future(draining)

        def on_signal() -> None:
            nonlocal at_once, signalled
            if signalled:  # the second: stop now
                at_once = True
                sending.cancel()
                return
            signalled = True
            stop.set()
            ledger.stopping(self.grace_s)
            loop.call_later(self.grace_s, sending.cancel)

        try:
            with graceful_stop(on_signal, handle_signals=self.handle_signals):
                try:
                    await sending
                except* FatalAPIError as group:
                    raise group.exceptions[0] from None
                except* StorageError as group:  # the journal could not keep an answer: stop at once
                    raise group.exceptions[0] from None
        except asyncio.CancelledError:
            if not signalled:
                raise  # cancelled from outside: not ours to handle
        if changed:
            raise changed[0]
        if at_once:
            return Ending.AT_ONCE
        if signalled:
            return Ending.STOPPED
        if budget is not None and budget.exhausted:
            ledger.counters.cap_stop = budget.stop
            return Ending.BUDGET
        return Ending.DONE
