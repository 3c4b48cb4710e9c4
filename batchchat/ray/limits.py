"""One set of limits for a whole Ray cluster: concurrency, requests/min, tokens/min and the cost
cap are totals across every worker.

A ``SharedLimits`` actor holds the one ``Throttle`` (the same adaptive pacing a local run has)
and the one ``Budget``. A worker leases permits from it, a few at a time when the pace allows
(so it does not ask per request), and reports how each attempt went: a 429 at once, so its
cool-down holds every worker; the rest batched. ``LeasedThrottle`` is that lease seen from a
worker: the throttle interface ``unit.Asker`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import ray

from ..core.errors import RATE_LIMITED, RequestError
from ..core.ratehints import RateInfo
from ..core.records import ChatRequest, ChatResult, Usage
from ..execute.unit import OverBudget
from ..job.money import Budget, estimate
from ..job.spec import Limits, Prices
from ..pacing.throttle import Permit, Throttle
from ..store.stats import Counters

REPORT_EVERY_S = 0.1  # how often a worker sends what it has to report, 429s excepted
MORE_WITHIN_S = 0.02  # a lease takes more permits only while they come this quickly


@dataclass(frozen=True)
class Report:
    """How one leased attempt went."""

    permit: int
    model: str
    answered: bool  # an answer came (paid for)
    usage: tuple[int | None, int | None, int | None] = (None, None, None)
    rate: RateInfo | None = None
    error_type: str | None = None
    status: int | None = None
    busy: bool = False


class SharedLimitsImpl:
    """The cluster's limits (a Ray actor, ``SharedLimits``)."""

    def __init__(self, limits: Limits, max_cost: float | None, prices: Prices) -> None:
        self.throttle = Throttle(limits.concurrency, rpm=limits.rpm, tpm=limits.tpm)
        self.paid = Counters()  # what every worker's answers cost: the budget reads it
        self.budget = Budget.of(max_cost, prices, self.paid)
        self.leased: dict[int, tuple[Permit, ChatRequest, float]] = {}
        self.ids = itertools.count()

    async def lease(self, request: ChatRequest, most: int) -> tuple[list[int], bool, float | None, float]:
        """Up to ``most`` permits, each a place in flight and a departure the limits allow now;
        (permit ids, whether the budget is spent, the allowed rate, seconds everyone is held)."""
        granted: list[int] = []
        while len(granted) < most:
            held: float | None = 0.0
            if self.budget is not None:  # the first waits for room; more only while it is there
                held = await self.budget.admit(request) if not granted else self.budget.reserve(request)
            if held is None:
                return granted, bool(self.budget and self.budget.exhausted), self.throttle.rate, self.throttle.held_s
            try:
                if granted:  # more only while they come at once: a paced lease is one permit
                    permit = await asyncio.wait_for(self.throttle.acquire(request), MORE_WITHIN_S)
                else:
                    permit = await self.throttle.acquire(request)
            except TimeoutError:
                if self.budget is not None:
                    self.budget.release(held)
                break
            number = next(self.ids)
            self.leased[number] = (permit, request, held)
            granted.append(number)
        return granted, False, self.throttle.rate, self.throttle.held_s

    def report(self, reports: list[Report]) -> tuple[float | None, float, tuple[str | None, str | None, str | None]]:
        """Attempts done: their places in flight are free, their 429s and headers teach the pace."""
        for report in reports:
            leased = self.leased.pop(report.permit, None)
            if leased is None:
                continue
            permit, request, held = leased
            if report.answered:
                usage = Usage(*report.usage)
                self.paid.add_usage(report.model, usage)
                if usage.prompt_tokens is None or usage.completion_tokens is None:
                    self.paid.add_unreported(report.model, usage, estimate(request))
                self.throttle.succeeded(permit, ChatResult(None, None, usage, None, None, 0.0,
                                                           rate=report.rate))  # fmt: skip
            else:
                error = RequestError(report.error_type or "error", "", status=report.status,
                                     rate=report.rate, busy=report.busy)  # fmt: skip
                self.throttle.failed(permit, error)
            self.throttle.release()
            if self.budget is not None:
                self.budget.release(held)
        throttle = self.throttle  # and what the summary tells of it: workers' counters carry it to the driver
        return throttle.rate, throttle.held_s, (throttle.paced, throttle.last_cut, throttle.crowded)

    def spent(self) -> tuple[dict[str, list[int]], bool]:
        """Tokens paid for by model, and whether the budget stopped the dispatching."""
        return self.paid.usage, self.budget is not None and self.budget.exhausted


SharedLimits = ray.remote(SharedLimitsImpl)


class LeasedThrottle:
    """A worker's side of the shared limits: what ``unit.Asker`` takes for a throttle."""

    def __init__(self, shared: Any, concurrency: int) -> None:
        self.shared = shared
        self.concurrency = concurrency  # this worker's share of places in flight
        self.rate: float | None = None
        self.held_s = 0.0
        self._slots = asyncio.Semaphore(concurrency)
        self._spare: list[int] = []
        self._waiting = 0
        self._reports: list[Report] = []
        self._lease_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.spent = False  # the shared budget refused a lease
        # the shared throttle's notes, as its latest answer to a report told them
        self.crowded: str | None = None
        self.paced: str | None = None
        self.last_cut: str | None = None
        self._urgent: asyncio.Future[None] | None = None

    async def acquire(self, request: ChatRequest) -> _Leased:
        await self._slots.acquire()
        try:
            self._waiting += 1
            async with self._lease_lock:
                if not self._spare:
                    granted, spent, self.rate, self.held_s = await self.shared.lease.remote(
                        request, max(1, self._waiting)
                    )
                    self._spare.extend(granted)
                    if spent and not granted:
                        self.spent = True
                        raise OverBudget
                permit = self._spare.pop()
        except BaseException:
            self._slots.release()
            raise
        finally:
            self._waiting -= 1
        return _Leased(permit, request.model)

    def release(self) -> None:
        self._slots.release()

    def succeeded(self, permit: _Leased, result: ChatResult) -> None:
        usage = result.usage
        self._report(Report(permit.number, permit.model, True, (usage.prompt_tokens, usage.completion_tokens,
                                                                  usage.total_tokens), result.rate))  # fmt: skip

    def failed(self, permit: _Leased, error: RequestError) -> None:
        report = Report(permit.number, permit.model, False, rate=error.rate,
                        error_type=error.error_type, status=error.status, busy=error.busy)  # fmt: skip
        self._report(report, now=error.error_type == RATE_LIMITED)  # a 429 holds every worker: at once

    def _report(self, report: Report, now: bool = False) -> None:
        self._reports.append(report)
        if now:
            self._urgent = asyncio.ensure_future(self.flush())
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(REPORT_EVERY_S)
        await self.flush()

    async def flush(self) -> None:
        """Everything to report, sent now; and the permits leased and not used, given back."""
        reports, self._reports = self._reports, []
        if reports:
            self.rate, self.held_s, (self.paced, self.last_cut, self.crowded) = await self.shared.report.remote(reports)

    async def close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            if self._flusher is not None:
                self._flusher.cancel()
        spare, self._spare = self._spare, []
        self._reports += [Report(number, "", False, error_type="unused") for number in spare]
        await self.flush()


@dataclass(frozen=True)
class _Leased:
    number: int
    model: str
