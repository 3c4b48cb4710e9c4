"""A pool of workers that take units of work from one shared iterator until it runs out, the run
stops, or the budget is spent.

Workers pull from the iterator rather than from a pre-filled queue, so requests are built only as
fast as they are sent and a million-row input never sits in memory at once. There is a worker
per concurrency slot (the throttle holds the slots). A request waiting out a retry's backoff
holds no slot: while it rests (``Resting``) the pool lends a worker to keep that slot busy, which
leaves when the rest is over. (A spare worker for every slot all the time cost 7% of the CPU
per request: each waited in the throttle's line for every request it sent.)

Stopping: once ``stop`` is set, no worker takes a new request; units under way end by themselves
(their next attempt raises ``Stopped``) or run to their end, and the caller decides how long to
wait for them. An exhausted budget stops the taking of new requests the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from ..core.records import ChatRequest, RowOutcome
from ..job.money import Budget
from .unit import Resting, Stopped


async def drain(
    requests: Iterable[ChatRequest],
    unit: Callable[[ChatRequest], Awaitable[RowOutcome]],
    on_outcome: Callable[[RowOutcome], None],
    *,
    workers: int,
    stop: asyncio.Event,
    budget: Budget | None = None,
    resting: Resting | None = None,
) -> None:
    """Run ``unit`` on every request, ``workers`` at a time, and one more for each unit
    ``resting`` (up to ``workers`` more); each finished unit's outcome goes to ``on_outcome``. A
    unit's error that is not ``Stopped`` cancels the others and is raised (in an ExceptionGroup)."""
    pending = iter(requests)
    lent = 0

    async def worker(stand_in: bool = False) -> None:
        nonlocal lent
        # An exhausted budget stops new work: no request is taken, and a conversation whose next
        # turn does not fit stops there (its answered turns are kept; its row stays pending).
        while not stop.is_set() and not (budget is not None and budget.exhausted):
            if stand_in and resting is not None and lent > resting.count:  # a rest is over: leave
                break
            request = next(pending, None)
            if request is None:
                break
            try:
                outcome = await unit(request)
            except Stopped:
                break
            on_outcome(outcome)
        if stand_in:
            lent -= 1

    try:
        async with asyncio.TaskGroup() as group:

            def lend() -> None:
                nonlocal lent
                if resting is not None and lent < min(resting.count, workers) and not stop.is_set():
                    lent += 1
                    group.create_task(worker(stand_in=True))

            if resting is not None:
                resting.lend = lend
            for _ in range(workers):
                group.create_task(worker())
    finally:
        if resting is not None:
            resting.lend = lambda: None
