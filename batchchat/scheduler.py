"""Async orchestration: workers pull rows, send them through the throttle with retries, and
report every outcome as it happens. No files, no tables: the caller decides where outcomes go.

Workers pull from one shared iterator rather than from a pre-filled queue, so requests are built
only as fast as they are sent and a million-row input never sits in memory at once. There are
twice as many workers as concurrency slots: a row waiting out a backoff holds no slot, and the
spare workers keep the slots busy meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from .errors import INVALID_INPUT, RATE_LIMITED, FatalAPIError, RequestError
from .records import ChatRequest, ChatResult, InvalidRow, RowOutcome
from .retry import is_fatal, with_retries
from .stats import Counters
from .throttle import Throttle

Send = Callable[[ChatRequest], Awaitable[ChatResult]]
Describe = Callable[[RequestError], str]


async def run_requests(
    items: Iterable[ChatRequest | InvalidRow],
    send: Send,
    *,
    throttle: Throttle,
    max_attempts: int,
    on_outcome: Callable[[RowOutcome], None],
    counters: Counters | None = None,
    describe_fatal: Describe = lambda error: error.message,
) -> None:
    """Send every request; each ends as exactly one ``RowOutcome`` passed to ``on_outcome``.

    A failed request is an outcome, not an exception. An error that would fail every row (bad key,
    no credit) raises ``FatalAPIError`` (in an ExceptionGroup) after cancelling all in-flight
    requests: sending more would only fail the same way.
    """
    pending = iter(items)
    count = counters or Counters()

    def note_retry() -> None:
        count.retries += 1

    async def attempt(request: ChatRequest) -> ChatResult:
        async with throttle.slot(request) as permit:
            count.requests += 1
            try:
                result = await send(request)
            except RequestError as error:
                throttle.failed(permit, error)
                count.rate_limited += error.error_type == RATE_LIMITED
                count.rate = throttle.rate
                if is_fatal(error):
                    raise FatalAPIError(describe_fatal(error), error) from None
                raise
            throttle.succeeded(permit, result)
            count.rate = throttle.rate
            return result

    async def worker() -> None:
        for item in pending:
            if isinstance(item, InvalidRow):
                on_outcome(
                    RowOutcome.failed(
                        item.row, key=None, model=item.model, error_type=INVALID_INPUT, error=item.reason, attempts=0
                    )
                )
                continue
            done = await with_retries(partial(attempt, item), max_attempts, on_retry=note_retry)
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
        for _ in range(2 * throttle.concurrency):
            group.create_task(worker())
