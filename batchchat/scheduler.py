"""Async orchestration: workers pull requests, send them through the throttle with retries, and
report every outcome as it happens. No files, no tables: the caller decides where outcomes go.

Workers pull from one shared iterator rather than from a pre-filled queue, so requests are built
only as fast as they are sent and a million-row input never sits in memory at once. There are
twice as many workers as concurrency slots: a request waiting out a backoff holds no slot, and
the spare workers keep the slots busy meanwhile.

Stopping: once ``stop`` is set, no worker takes a new request or starts another attempt; requests
in flight run to their end, and the caller decides how long to wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from .errors import RATE_LIMITED, FatalAPIError, RequestError
from .records import ChatRequest, ChatResult, RowOutcome
from .retry import is_fatal, with_retries
from .stats import Counters
from .throttle import Throttle

Send = Callable[[ChatRequest], Awaitable[ChatResult]]
Describe = Callable[[RequestError], str]


class Stopped(Exception):
    """The run is stopping: the request is left unfinished, to be sent by a later run."""


async def run_requests(
    requests: Iterable[ChatRequest],
    send: Send,
    *,
    throttle: Throttle,
    max_attempts: int,
    on_outcome: Callable[[RowOutcome], None],
    counters: Counters | None = None,
    describe_fatal: Describe = lambda error: error.message,
    stop: asyncio.Event | None = None,
) -> None:
    """Send every request; each ends as exactly one ``RowOutcome`` passed to ``on_outcome``,
    unless ``stop`` is set first, in which case the requests not yet finished get none.

    A failed request is an outcome, not an exception. An error that would fail every request (bad
    key, no credit) raises ``FatalAPIError`` (in an ExceptionGroup) after cancelling all in-flight
    requests: sending more would only fail the same way.
    """
    pending = iter(requests)
    count = counters or Counters()
    stopping = stop or asyncio.Event()

    def note_retry() -> None:
        count.retries += 1

    async def backoff(seconds: float) -> None:
        """A retry's wait, cut short when the run stops (the attempt after it then does not happen)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    async def attempt(request: ChatRequest) -> ChatResult:
        if stopping.is_set():
            raise Stopped
        permit = await throttle.acquire(request)
        try:
            if stopping.is_set():  # the stop came while this request waited for the limits
                raise Stopped
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
        finally:
            throttle.release()

    async def worker() -> None:
        while not stopping.is_set():
            request = next(pending, None)
            if request is None:
                return
            try:
                done = await with_retries(partial(attempt, request), max_attempts, sleep=backoff, on_retry=note_retry)
            except Stopped:
                return
            if done.result is not None:
                on_outcome(RowOutcome.answered(request, done.result, done.attempts))
            else:
                error = done.error
                assert error is not None
                on_outcome(
                    RowOutcome.failed(
                        request.row,
                        key=request.key,
                        model=request.model,
                        error_type=error.error_type,
                        error=error.message,
                        attempts=done.attempts,
                    )
                )

    async with asyncio.TaskGroup() as group:
        for _ in range(2 * throttle.concurrency):
            group.create_task(worker())
