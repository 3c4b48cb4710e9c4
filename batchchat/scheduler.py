"""Async orchestration: a fixed pool of workers pulls requests, sends them with retries, and
reports every outcome as it happens. No files, no tables: the caller decides where outcomes go.

Workers pull from one shared iterator rather than from a pre-filled queue, so requests are
built only as fast as they are sent and a million-row input never sits in memory at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from .errors import INVALID_INPUT
from .records import ChatRequest, ChatResult, InvalidRow, RowOutcome
from .retry import with_retries

Send = Callable[[ChatRequest], Awaitable[ChatResult]]


async def run_requests(
    items: Iterable[ChatRequest | InvalidRow],
    send: Send,
    *,
    concurrency: int,
    max_attempts: int,
    on_outcome: Callable[[RowOutcome], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Send every request; each ends as exactly one ``RowOutcome`` passed to ``on_outcome``.

    A failed request is an outcome, not an exception. An exception escaping here is a bug or a
    cancellation, and it stops all workers (TaskGroup semantics).
    """
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            if isinstance(item, InvalidRow):
                on_outcome(
                    RowOutcome.failed(
                        item.row, key=None, model=item.model, error_type=INVALID_INPUT, error=item.reason, attempts=0
                    )
                )
                continue
            done = await with_retries(partial(send, item), max_attempts, sleep=sleep)
            if done.result is not None:
                on_outcome(RowOutcome.answered(item, done.result, done.attempts))
            else:
                error = done.error
                assert error is not None
                on_outcome(
                    RowOutcome.failed(
                        item.row,
                        key=item.key,
                        model=item.model,
                        error_type=error.error_type,
                        error=error.message,
                        attempts=done.attempts,
                    )
                )

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
