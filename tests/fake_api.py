"""An in-memory chat API on the event loop's clock, for tests of the live engine's workers and throttle.

It enforces a per-second request bucket like a real provider (429 with headers when over),
answers after a latency, fails rows as scripted, and records when each request departed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from batchchat.core.errors import STREAM_TRUNCATED, TIMEOUT, RequestError
from batchchat.core.records import ChatRequest, ChatResult, RowOutcome, Usage
from batchchat.execute.pool import drain
from batchchat.execute.unit import Asker, Resting, Send
from batchchat.job.money import Budget
from batchchat.pacing.throttle import Throttle
from batchchat.providers.openai import rate_of, status_error
from batchchat.store.stats import Counters

Script = Callable[[ChatRequest, int], RequestError | None]  # (request, attempt number) -> error or None


def requests(n: int, max_tokens: int | None = None) -> list[ChatRequest]:
    params = (("max_tokens", max_tokens),) if max_tokens else ()
    return [
        ChatRequest(row=i, key=f"k{i}", model="m", messages=({"role": "user", "content": f"q{i}"},), params=params)
        for i in range(n)
    ]


def error(status: int, headers: dict[str, str] | None = None, code: str | None = None) -> RequestError:
    """The RequestError the real client makes of this status."""
    body = json.dumps({"error": {"message": f"status {status}", "code": code}}).encode()
    return status_error(status, body, "application/json", rate_of(headers) if headers else None)


def timed_out() -> RequestError:
    return RequestError(TIMEOUT, "no complete answer in time", retryable=True)


def truncated() -> RequestError:
    """The RequestError the real client makes of a stream that ended without its end."""
    return RequestError(STREAM_TRUNCATED, "stream ended without [DONE]", status=200, retryable=True)


@dataclass
class FakeAPI:
    latency: float = 0.05
    rate: float | None = None  # requests/s the "server" accepts; None = unlimited
    burst: float | None = None  # bucket size; defaults to one second's worth
    limit_headers: bool = False  # send Together's x-ratelimit-limit / -remaining
    retry_after: str | None = "1"
    reset_header: bool = True
    script: Script | None = None
    tokens: int = 10  # total tokens each answer reports
    jitter: Callable[[int], float] | None = None  # extra latency by row
    extra_headers: dict[str, str] = field(default_factory=dict)
    departures: list[float] = field(default_factory=list)
    departed_rows: list[int] = field(default_factory=list)  # the row of each departure
    rejected: list[float] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    answered: dict[int, int] = field(default_factory=dict)
    one_at_a_time: bool = False  # like llama.cpp's server: serves one, and a new arrival cuts the one in flight
    slots: int = 0  # serves this many at once (one_at_a_time: one); one more arriving cuts the oldest served
    over_status: int = 429  # what a request over the rate gets: 503 plays a provider short of capacity
    rate_later: tuple[float, float] | None = None  # (at, rate): the limit moves then
    in_flight: int = 0
    peak: int = 0
    cut: int = 0  # answers cut short by a new arrival

    def __post_init__(self) -> None:
        self._level = self.burst or (self.rate or 0)
        self._stamp = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._served: list[asyncio.Event] = []  # of the requests served, oldest first: set, it is cut

    def _limit_headers(self) -> dict[str, str]:
        if not self.limit_headers or self.rate is None:
            return dict(self.extra_headers)
        return {"x-ratelimit-limit": str(int(self.rate * 60)), "x-ratelimit-remaining": str(int(self._level)),
                **self.extra_headers}  # fmt: skip

    def _admit(self, now: float) -> float:
        """0 when the bucket has room, else the seconds until it will."""
        if self.rate_later is not None and now >= self.rate_later[0]:
            self.rate, self.burst, self.rate_later = self.rate_later[1], None, None
        if self.rate is None:
            return 0.0
        capacity = self.burst or self.rate
        self._level = min(capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._level >= 1:
            self._level -= 1
            return 0.0
        return (1 - self._level) / self.rate

    async def complete(self, request: ChatRequest) -> ChatResult:
        now = asyncio.get_running_loop().time()
        self.departures.append(now)
        self.departed_rows.append(request.row)
        attempt = self.attempts[request.row] = self.attempts.get(request.row, 0) + 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            wait = self._admit(now)
            if wait > 0:
                self.rejected.append(now)
                if self.over_status != 429:  # no limit said: the capacity ran short
                    raise error(self.over_status)
                headers = self._limit_headers()
                if self.retry_after is not None:
                    headers["retry-after"] = self.retry_after
                if self.reset_header:
                    headers["x-ratelimit-reset"] = f"{wait:.3f}"
                raise error(429, headers)
            scripted = self.script(request, attempt) if self.script else None
            if scripted is not None:
                raise scripted
            latency = self.latency + (self.jitter(request.row) if self.jitter else 0.0)
            if self.one_at_a_time or self.slots:
                await self._serve_in_a_slot(latency)
            else:
                await asyncio.sleep(latency)
            self.answered[request.row] = self.answered.get(request.row, 0) + 1
            usage = Usage(self.tokens // 2, self.tokens - self.tokens // 2, self.tokens)
            return ChatResult(f"a{request.row}", "stop", usage, f"id{request.row}", "m", self.latency,
                              rate=rate_of(self._limit_headers()) if self._limit_headers() else None)  # fmt: skip
        finally:
            self.in_flight -= 1

    async def _serve_in_a_slot(self, latency: float) -> None:
        """Wait for a slot; arriving when all are served cuts the oldest answer short."""
        slots = self.slots or 1
        served = [cut for cut in self._served if not cut.is_set()]
        if len(served) >= slots:
            served[0].set()
        self._slots = self._slots or asyncio.Semaphore(slots)
        async with self._slots:
            cutting = asyncio.Event()
            self._served.append(cutting)
            try:
                await asyncio.wait_for(cutting.wait(), latency)
            except TimeoutError:
                return
            finally:
                self._served.remove(cutting)
            self.cut += 1
            raise truncated()


async def drive(api: FakeAPI, items, throttle: Throttle, max_attempts: int = 6, counters: Counters | None = None):
    """Run the live engine's workers against the fake API; returns the outcomes by row."""
    outcomes = {}
    await run_requests(items, api.complete, throttle=throttle, max_attempts=max_attempts,
                       on_outcome=lambda o: outcomes.__setitem__(o.row, o), counters=counters)  # fmt: skip
    return outcomes


async def run_requests(items, send: Send, *, throttle: Throttle, max_attempts: int,
                       on_outcome: Callable[[RowOutcome], None], counters: Counters | None = None,
                       budget: Budget | None = None) -> None:  # fmt: skip
    """The live engine's pool and units, without a client or a store: what its workers do."""
    stop = asyncio.Event()
    resting = Resting()
    asker = Asker(send, max_attempts=max_attempts, throttle=throttle, counters=counters, budget=budget, stop=stop,
                  resting=resting)  # fmt: skip
    await drain(items, asker.unit, on_outcome, workers=throttle.concurrency, stop=stop, budget=budget, resting=resting)
