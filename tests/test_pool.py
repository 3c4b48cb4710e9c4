"""The live engine's workers and units, on a virtual clock: every status code's handling, retries,
waits and fail-fast."""

import asyncio
import random
from email.utils import formatdate

import pytest

from batchchat.core.errors import FatalAPIError, RequestError
from batchchat.pacing.throttle import Throttle
from batchchat.store.stats import Counters
from tests.fake_api import FakeAPI, drive, error, requests
from tests.virtual_time import run_virtual


def run(api, items, concurrency=8, max_attempts=6, **limits):
    async def go():
        counters = Counters()
        outcomes = await drive(api, items, Throttle(concurrency, **limits), max_attempts, counters)
        return outcomes, counters

    return run_virtual(go())


def test_every_request_ends_as_exactly_one_outcome_with_its_own_answer():
    rng = random.Random(3)
    latencies = {i: rng.uniform(0.001, 0.2) for i in range(500)}

    api = FakeAPI(latency=0, jitter=latencies.__getitem__)
    outcomes, counters = run(api, requests(500), concurrency=32)
    assert sorted(outcomes) == list(range(500))
    assert all(
        o.response == f"a{o.row}" and o.request_id == f"id{o.row}" and o.status == "ok" for o in outcomes.values()
    )
    assert api.peak == 32
    assert [o.row for o in outcomes.values()] != list(range(500))  # answers did arrive out of order
    assert counters.requests == 500 and counters.retries == 0


def test_concurrency_bounds_requests_in_flight():
    api = FakeAPI()
    run(api, requests(100), concurrency=3)
    assert api.peak == 3


def once(failure):
    """A script failing each row's first attempt with ``failure``."""
    return lambda request, attempt: failure if attempt == 1 else None


@pytest.mark.parametrize(
    "failure",
    [
        error(408), error(409), error(429), error(500), error(502), error(503), error(504),
        RequestError("timeout", "no complete answer within 5 s", retryable=True),
        RequestError("connection", "connection failed: Server disconnected", retryable=True),
        RequestError("bad_response", "HTTP 200 with a body that is not JSON: {", status=200, retryable=True),
    ],
    ids=["408", "409", "429", "500", "502", "503", "504", "timeout", "connection", "bad_response"],
)  # fmt: skip
def test_transient_failures_are_retried_and_the_row_ends_ok(failure):
    api = FakeAPI(script=once(failure))
    outcomes, counters = run(api, requests(5))
    assert all(o.status == "ok" and o.attempts == 2 and o.response == f"a{o.row}" for o in outcomes.values())
    assert counters.retries == 5 and counters.requests == 10


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, "bad_request"), (403, "forbidden"), (404, "not_found"), (422, "bad_request")]
)
def test_request_errors_are_never_retried_and_become_error_rows_at_once(status, error_type):
    api = FakeAPI(script=lambda request, attempt: error(status) if request.row == 1 else None)
    outcomes, counters = run(api, requests(3))
    assert (outcomes[1].status, outcomes[1].error_type, outcomes[1].attempts) == ("error", error_type, 1)
    assert outcomes[1].error == f"HTTP {status}: status {status}"
    assert outcomes[0].status == outcomes[2].status == "ok"
    assert api.attempts[1] == 1 and counters.retries == 0


def test_rows_that_keep_failing_end_as_error_rows_after_max_attempts():
    api = FakeAPI(script=lambda request, attempt: error(500) if request.row == 2 else None)
    outcomes, counters = run(api, requests(4), max_attempts=4)
    assert (outcomes[2].status, outcomes[2].error_type, outcomes[2].attempts) == ("error", "server_error", 4)
    assert api.attempts[2] == 4 and counters.retries == 3
    assert [outcomes[i].status for i in (0, 1, 3)] == ["ok"] * 3


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": formatdate(4.0, usegmt=True)}, 4.0),  # an HTTP date; the test clock starts at 0
        ({"x-ratelimit-reset": "2.5"}, 2.5),
        ({"x-ratelimit-reset": "1m30s"}, 90.0),
    ],
    ids=["retry-after-ms", "retry-after-seconds", "retry-after-date", "x-ratelimit-reset", "reset-duration"],
)
def test_a_retry_waits_what_the_server_asked(headers, wait, monkeypatch):
    monkeypatch.setattr("batchchat.providers.base.time.time", lambda: 0.0)  # the wall clock the HTTP date is read against
    api = FakeAPI(script=lambda request, attempt: error(500, headers) if attempt == 1 else None)
    run(api, requests(1))
    first, second = api.departures
    assert second - first == pytest.approx(wait, abs=0.01)


@pytest.mark.parametrize(("status", "headers"), [(429, {"retry-after": "3"}), (503, {"retry-after": "3"}), (503, {})])
def test_a_lone_refusal_waits_a_short_backoff_not_its_whole_hint(status, headers):
    """A 429 or 503 the client's rate did not cause (one request, far under any limit): its
    retry-after speaks of the provider's capacity; waiting it out would cost a run's tail (and a
    503 with none gets no longer a wait than one with a hint)."""
    api = FakeAPI(script=lambda request, attempt: error(status, headers) if attempt == 1 else None)
    run(api, requests(1))
    first, second = api.departures
    assert 0.05 <= second - first <= 0.1 + 1e-6


def test_without_a_hint_retries_back_off_exponentially_with_jitter():
    api = FakeAPI(script=lambda request, attempt: error(500) if attempt < 6 else None)
    outcomes, _ = run(api, requests(1), max_attempts=6)
    gaps = [b - a for a, b in zip(api.departures, api.departures[1:], strict=False)]
    assert outcomes[0].attempts == 6
    assert all(0 <= gap <= 0.5 * 2**i + 0.01 for i, gap in enumerate(gaps))


@pytest.mark.parametrize(
    "failure",
    [error(401), error(402), error(429, code="insufficient_quota")],
    ids=["401", "402", "insufficient_quota"],
)
def test_errors_that_would_fail_every_row_stop_the_run_at_once(failure):
    api = FakeAPI(script=lambda request, attempt: failure)

    async def go():
        await drive(api, requests(1000), Throttle(16))

    with pytest.raises(ExceptionGroup) as info:
        run_virtual(go())
    fatal = info.value.exceptions[0]
    assert isinstance(fatal, FatalAPIError) and fatal.error.error_type in ("auth", "no_credit")
    assert len(api.departures) <= 2 * 16  # at most two requests per concurrency slot


def test_fail_fast_keeps_what_finished_and_cancels_what_is_in_flight():
    # The first 40 rows answer; then the key is revoked.
    api = FakeAPI(latency=0.05, script=lambda request, attempt: error(401) if request.row >= 40 else None)
    outcomes = {}

    async def go():
        from tests.fake_api import run_requests

        await run_requests(requests(1000), api.complete, throttle=Throttle(8), max_attempts=6,
                           on_outcome=lambda o: outcomes.__setitem__(o.row, o))  # fmt: skip

    with pytest.raises(ExceptionGroup):
        run_virtual(go())
    assert set(outcomes) == set(range(40))
    assert all(o.status == "ok" for o in outcomes.values())
    assert len(api.departures) <= 40 + 2 * 8


def test_a_request_waiting_out_its_backoff_holds_no_slot_and_another_worker_fills_it():
    """Row 0 waits 10 s to be retried; the other 19 rows keep both slots busy meanwhile (9.5 s of
    work, two at a time), and row 0's retry ends last, at 11 s. Without a worker lent for the
    rest, the other rows go one at a time for those 10 s, and the job takes 15 s."""
    api = FakeAPI(latency=1.0, script=lambda request, attempt: error(500, {"retry-after": "10"})
                  if request.row == 0 and attempt == 1 else None)  # fmt: skip

    async def go():
        outcomes = await drive(api, requests(20), Throttle(2))
        return outcomes, asyncio.get_running_loop().time()

    outcomes, elapsed = run_virtual(go())
    assert all(o.status == "ok" for o in outcomes.values()) and outcomes[0].attempts == 2
    assert api.peak == 2  # the lent worker left once the rest was over: never three in flight
    assert elapsed == pytest.approx(11.0, abs=0.1)
