"""A pool of workers that take units of work from one shared iterator until it runs out, the run
stops, or the budget is spent.

Workers pull from the iterator rather than from a pre-filled queue, so requests are built only as
fast as they are sent and a million-row input never sits in memory at once. There are twice as
many workers as concurrency slots (the throttle holds the slots): a request waiting out a backoff
holds no slot, and the spare workers keep the slots busy meanwhile.

Stopping: once ``stop`` is set, no worker takes a new request; units under way end by themselves
(their next attempt raises ``Stopped``) or run to their end, and the caller decides how long to
wait for them. An exhausted budget stops the taking of new requests the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from ..money import Budget
from ..records import ChatRequest, RowOutcome
from ..unit import Stopped


async def drain(
    requests: Iterable[ChatRequest],
    unit: Callable[[ChatRequest], Awaitable[RowOutcome]],
    on_outcome: Callable[[RowOutcome], None],
    *,
    workers: int,
    stop: asyncio.Event,
    budget: Budget | None = None,
) -> None:
    """Run ``unit`` on every request, ``workers`` at a time; each finished unit's outcome goes to
    ``on_outcome``. A unit's error that is not ``Stopped`` cancels the others and is raised (in
    an ExceptionGroup)."""
    pending = iter(requests)

    async def worker() -> None:
        # An exhausted budget stops new work: no request is taken, and a conversation whose next
        # turn does not fit stops there (its answered turns are kept; its row stays pending).
        while not stop.is_set() and not (budget is not None and budget.exhausted):
            request = next(pending, None)
            if request is None:
                return
            try:
                outcome = await unit(request)
            except Stopped:
                return
            on_outcome(outcome)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())
