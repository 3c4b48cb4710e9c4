"""Which failures are worth another attempt, and how long to wait before it.

The server's own hint comes first (the wait its response asks for, as its dialect read it:
``ratehints.RateInfo.wait_s``): it knows when capacity returns. Without one, waits grow
exponentially with full jitter, so many workers that failed together do not return together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ..core.errors import AUTH, NO_CREDIT, REDIRECT, RequestError

T = TypeVar("T")

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0
LONE_WAIT_S = 0.1  # a lone 429 or 503's first wait (at most), ...
LONE_GROWTH = 1.5  # ... times this for each attempt after, up to the server's hint
LEAST_WAIT_S = 0.05  # a hint is waited this long at least, times the attempt (with jitter)
# Failures that would repeat for every row: no retry, and no more requests at all.
FATAL_TYPES = frozenset({AUTH, NO_CREDIT, REDIRECT})
_JITTER = random.Random()  # one for the whole process: seeding a new one per request costs a syscall


@dataclass(frozen=True, slots=True)
class Attempted(Generic[T]):
    """The end of a retried call: its result, or the last error, and how many attempts it took."""

    result: T | None
    error: RequestError | None
    attempts: int


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, RequestError) and error.retryable


def is_fatal(error: RequestError) -> bool:
    return error.error_type in FATAL_TYPES


def backoff_seconds(attempt: int, rng: random.Random) -> float:
    """Full jitter over an exponential ceiling: 0.5 s, 1 s, 2 s ... capped at 60 s."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)


def wait_seconds(error: BaseException | None, attempt: int, rng: random.Random) -> float:
    """The server's hint, or an exponential backoff. A lone 429 or 503 (one the throttle found
    the client's rate did not cause) with no more than a bare ``retry-after`` waits a short
    backoff, growing to the hint: such a hint speaks of the provider's capacity, not of this
    client, and waiting it out costs the run's tail a whole second per such answer, while a
    request answered so several times in a row soon waits as long as asked."""
    if isinstance(error, RequestError):
        rate = error.rate
        hint = rate.wait_s if rate is not None else None
        # A lone one that speaks of a rate limit (its limits, remaining or resets) waits as asked,
        # as any other: the limit is real, only not yet known to be ours, and short waits would
        # spend the row's attempts against it. So does a 429 that names no wait at all (a limit
        # that says nothing).
        speaks = rate is not None and rate.states_limit
        if error.lone and not speaks and (hint is not None or error.busy):
            ceiling = LONE_WAIT_S * LONE_GROWTH ** (attempt - 1)
            short = rng.uniform(ceiling / 2, ceiling)
            return short if hint is None else min(short, hint)
        if hint is not None:
            # "0.000" (a limit's next token due within a millisecond) is not a plan: retried at
            # once, every row refused together would spend its attempts in the same instant
            return max(hint, rng.uniform(0.5, 1.0) * LEAST_WAIT_S * attempt)
    return backoff_seconds(attempt, rng)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    max_attempts: int,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[RequestError], None] | None = None,
) -> Attempted[T]:
    """Run ``call`` until it succeeds, fails for good, or uses ``max_attempts`` (the first counts).

    The first attempt runs bare: almost every request succeeds at once, and tenacity's machinery
    costs more per call than the rest of batchchat's own work. Only a request that failed in a way
    worth retrying goes on to tenacity, for attempts 2 and up. ``on_retry`` hears each failure that
    is to be tried again.
    """
    chance = rng or _JITTER
    try:
        return Attempted(await call(), None, 1)
    except RequestError as error:
        if max_attempts <= 1 or not error.retryable:
            return Attempted(None, error, 1)
        first_failure = error

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return wait_seconds(error, state.attempt_number + 1, chance)

    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(failure, RequestError):
            on_retry(failure)

    if on_retry is not None:
        on_retry(first_failure)
    await sleep(wait_seconds(first_failure, 1, chance))
    attempts = 1
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(max_attempts - 1),
            wait=wait,
            retry=retry_if_exception(is_retryable),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                attempts = attempt.retry_state.attempt_number + 1
                result = await call()
    except RequestError as error:
        return Attempted(None, error, attempts)
    return Attempted(result, None, attempts)


async def once(make: Callable[[], Awaitable[T]], look: Callable[[], Awaitable[T | None]], max_attempts: int, *,
               sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Attempted[T]:  # fmt: skip
    """A call that makes something at the provider (a file, a batch), made once: after an attempt
    that failed in a way that may still have acted (a timeout, a 502, a connection cut after the
    request went out), what it may have made is looked for (``look``), and taken when found,
    before it is made again. A look that fails is retried as the attempt it is."""
    made = False

    async def attempt() -> T:
        nonlocal made
        if made:
            found = await look()
            if found is not None:
                return found
        made = True
        return await make()

    return await with_retries(attempt, max_attempts, sleep=sleep)
