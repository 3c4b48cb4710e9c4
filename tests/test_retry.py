import asyncio
import random
from email.utils import formatdate

import pytest

from batchchat.core.errors import RequestError
from batchchat.pacing.retry import backoff_seconds, wait_seconds, with_retries
from batchchat.providers.base import duration_seconds
from batchchat.providers.openai import rate_of

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": formatdate(NOW + 7, usegmt=True)}, 7.0),
        ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"x-ratelimit-reset": "2"}, 2.0),
        ({"x-ratelimit-reset": "1m30s"}, 90.0),
        ({"x-ratelimit-reset": str(NOW + 4)}, 4.0),
        ({"retry-after": "86400"}, 300.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_server_hints_in_every_form(headers, expected):
    assert rate_of(headers, now=NOW).wait_s == expected


@pytest.mark.parametrize(
    ("text", "seconds"), [("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("x", None), ("5", None)]
)
def test_openai_durations(text, seconds):
    assert duration_seconds(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_backoff_is_full_jitter_under_a_doubling_ceiling_capped_at_a_minute():
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (30, 60.0)]:
        waits = [backoff_seconds(attempt, rng) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8


def test_a_hint_wins_over_backoff():
    error = RequestError("rate_limited", "slow down", status=429, retryable=True, rate=rate_of({"retry-after": "4"}))
    assert wait_seconds(error, 1, random.Random(0)) == 4.0
    assert wait_seconds(RequestError("server_error", "x", retryable=True), 1, random.Random(0)) <= 0.5


class Flaky:
    """Fails with the given errors in turn, then answers."""

    def __init__(self, *errors: RequestError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


def run_retries(call, max_attempts):
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    done = asyncio.run(with_retries(call, max_attempts, sleep=sleep, rng=random.Random(0)))
    return done, waits


def test_retryable_errors_are_retried_until_an_answer():
    call = Flaky(RequestError("server_error", "500", retryable=True),
                 RequestError("rate_limited", "429", retryable=True, rate=rate_of({"retry-after": "2"})))  # fmt: skip
    done, waits = run_retries(call, 6)
    assert (done.result, done.error, done.attempts) == ("answer", None, 3)
    assert len(waits) == 2 and waits[1] == 2.0


def test_a_request_that_keeps_failing_stops_after_max_attempts_with_the_last_error():
    call = Flaky(*[RequestError("server_error", f"500 #{i}", retryable=True) for i in range(10)])
    done, waits = run_retries(call, 4)
    assert done.result is None and done.attempts == 4 and call.calls == 4
    assert done.error.message == "500 #3"
    assert len(waits) == 3


def test_errors_that_are_not_retryable_end_at_once():
    call = Flaky(RequestError("bad_request", "HTTP 400", status=400, retryable=False))
    done, waits = run_retries(call, 6)
    assert done.attempts == 1 and done.error.error_type == "bad_request" and waits == []
