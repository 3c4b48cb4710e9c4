"""The scheduler with an in-memory client and a sleep that does not wait."""

import asyncio
import random

from batchchat.errors import RequestError
from batchchat.records import ChatRequest, ChatResult, InvalidRow, Usage


def requests(n: int) -> list[ChatRequest]:
    return [
        ChatRequest(row=i, key=f"k{i}", model="m", messages=({"role": "user", "content": f"q{i}"},)) for i in range(n)
    ]


class FakeClient:
    """Answers 'a<row>' after a random pause; fails rows as told; records the peak in flight."""

    def __init__(self, fail_times: dict[int, int] | None = None, fail_always: set[int] | None = None) -> None:
        self.fail_times = dict(fail_times or {})
        self.fail_always = fail_always or set()
        self.in_flight = 0
        self.peak = 0
        self.sent: list[int] = []
        self.rng = random.Random(3)

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.sent.append(request.row)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.rng.random() / 1000)
            if request.row in self.fail_always:
                raise RequestError("server_error", "HTTP 500: boom", status=500, retryable=True)
            if self.fail_times.get(request.row, 0) > 0:
                self.fail_times[request.row] -= 1
                raise RequestError("rate_limited", "HTTP 429", status=429, retryable=True)
            return ChatResult(f"a{request.row}", "stop", Usage(3, 2, 5), f"id{request.row}", "m", 0.01)
        finally:
            self.in_flight -= 1


async def no_wait(seconds: float) -> None:
    pass


def run(items, client, concurrency=8, max_attempts=6):
    from batchchat.scheduler import run_requests

    outcomes = []
    asyncio.run(run_requests(items, client.complete, concurrency=concurrency, max_attempts=max_attempts,
                             on_outcome=outcomes.append, sleep=no_wait))  # fmt: skip
    return outcomes


def test_every_request_ends_as_exactly_one_outcome_with_its_own_answer():
    client = FakeClient()
    outcomes = run(requests(500), client, concurrency=32)
    assert sorted(o.row for o in outcomes) == list(range(500))
    assert all(o.response == f"a{o.row}" and o.request_id == f"id{o.row}" and o.status == "ok" for o in outcomes)
    assert [o.row for o in outcomes] != list(range(500))  # they did finish out of order
    assert client.peak == 32


def test_concurrency_bounds_requests_in_flight():
    client = FakeClient()
    run(requests(100), client, concurrency=3)
    assert client.peak == 3


def test_retries_are_counted_and_exhausted_rows_are_error_rows():
    client = FakeClient(fail_times={1: 2}, fail_always={2})
    outcomes = {o.row: o for o in run(requests(4), client, max_attempts=4)}
    assert (outcomes[1].status, outcomes[1].attempts, outcomes[1].response) == ("ok", 3, "a1")
    assert (outcomes[2].status, outcomes[2].attempts) == ("error", 4)
    assert (outcomes[2].error_type, outcomes[2].error, outcomes[2].response) == ("server_error", "HTTP 500: boom", None)
    assert outcomes[0].attempts == 1 and client.sent.count(2) == 4


def test_invalid_rows_become_error_rows_without_a_request():
    items = [*requests(2), InvalidRow(2, "m", "empty prompt: the row has no text to send")]
    client = FakeClient()
    outcomes = {o.row: o for o in run(items, client)}
    assert (outcomes[2].status, outcomes[2].error_type, outcomes[2].attempts) == ("error", "invalid_input", 0)
    assert 2 not in client.sent
