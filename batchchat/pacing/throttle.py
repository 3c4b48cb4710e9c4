"""How fast requests go out: concurrency, requests/min, tokens/min, and a rate that adapts.

Every attempt, first or retry, passes here before it is sent:

1. a concurrency slot, held only while the request is in flight (a row waiting out a backoff holds
   none, so the slot serves other rows meanwhile). The slots open are ``--concurrency`` at first,
   fewer while the server shows it is crowded (``Crowding``: streams cut short, timeouts, 503s
   from requests sent beside others: a local server that serves one request at a time cuts the
   stream in flight when the next arrives), and open again slowly once it is not;
2. the shared cool-down: after a 429 our rate caused, *no* request goes out until the server's hint has passed;
   retrying workers each waiting on their own would otherwise come back together and trip it again;
3. ``--rpm`` and ``--tpm``, fixed limits on aiolimiter. Requests/min is a bucket of half a second's
   requests, because providers enforce per second (Together: 60 RPM is one request a second); tokens/min is
   the per-minute budget, and a request costing more than all of it waits for an empty bucket and
   goes alone rather than never;
4. a pacer that spaces requests at the adaptive rate: unbounded at first, cut multiplicatively on a
   429 our rate caused (once per congestion event, not once per rejected request; ``Congestion``
   tells those from the background 429s providers send anyway, which only delay their own
   request, and undoes at once a cut that cost answers), raised additively after a second's worth
   of successes, and never above the ceiling the provider's rate-limit headers state.
   It is a reservation clock rather than aiolimiter because its rate changes all the time and
   aiolimiter fixes the rate when it is built.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from ..core.errors import RATE_LIMITED, RequestError
from ..core.ratehints import HINT_CAP_S, RateInfo
from ..core.records import ChatRequest, ChatResult
from ..job.money import DEFAULT_COMPLETION_TOKENS, likely
from .congestion import BETA, Congestion
from .crowding import Crowding

LEAST_SENT = 8  # requests in a window before its 429s are judged (fewer when fewer go at once)
STEP_SHARE = 0.1  # additive increase per second of successes, as a share of the rate after the cut
MIN_RATE = 0.05  # requests/s: never stop altogether
DEFAULT_COOLDOWN_S = 1.0  # when a 429 carries no hint
LEAST_HOLD_S = 0.01  # a shorter hold ("x-ratelimit-reset: 0.000") holds nothing
CHANGES_TOLD = 4  # cuts of the rate the summary tells one by one


class TokenEstimator:
    """A request's token cost before it is sent, corrected by what answers really cost.

    The raw estimate is prompt characters / 4 plus ``max_tokens`` (or a default); a running ratio
    of actual to estimated tokens scales it, so a job of short answers stops reserving
    ``max_tokens`` it never uses.
    """

    def __init__(self, default_completion_tokens: int = DEFAULT_COMPLETION_TOKENS) -> None:
        self.default_completion_tokens = default_completion_tokens
        self._estimated = 0.0
        self._actual = 0.0
        self._answers = 0

    def raw(self, request: ChatRequest) -> float:
        tokens = likely(request, self.default_completion_tokens)
        return tokens.prompt_tokens + tokens.completion_tokens

    @property
    def ratio(self) -> float:
        if self._answers == 0 or self._estimated <= 0:
            return 1.0
        return min(20.0, max(0.05, self._actual / self._estimated))

    def observe(self, raw_estimate: float, actual_tokens: int) -> None:
        self._estimated += raw_estimate
        self._actual += actual_tokens
        self._answers += 1

    @property
    def mean_tokens(self) -> float | None:
        return self._actual / self._answers if self._answers else None


class Pacer:
    """Spaces departures ``1/rate`` apart by handing out reserved times; the rate may change anytime."""

    def __init__(self) -> None:
        self.next_at = 0.0

    def reserve(self, now: float, rate: float | None) -> float:
        """Seconds to wait before departing."""
        if rate is None:
            return 0.0
        at = max(now, self.next_at)
        self.next_at = at + 1.0 / rate
        return at - now


@dataclass(frozen=True, slots=True)
class RateChange:
    """A cut of the departure rate, or one undone, for the progress lines and the summary."""

    at: float  # epoch seconds
    before: float | None  # requests/s; None: only concurrency bounded it
    after: float | None
    why: str


@dataclass(frozen=True, slots=True)
class Permit:
    dispatched_at: float
    raw_cost: float


class Throttle:
    def __init__(
        self,
        concurrency: int,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        default_completion_tokens: int = DEFAULT_COMPLETION_TOKENS,
    ) -> None:
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.estimator = TokenEstimator(default_completion_tokens)
        self.crowding = Crowding(concurrency)
        self._in_flight = 0
        self._room: deque[asyncio.Future[None]] = deque()  # attempts waiting for a slot
        self._rpm_limiter = AsyncLimiter(*_half_second_bucket(rpm)) if rpm else None
        self._tpm_limiter = AsyncLimiter(tpm, 60) if tpm else None
        self._pacer = Pacer()
        self.adaptive_rate: float | None = None  # requests/s; None until the first 429
        self._step = 0.0
        least = min(concurrency, LEAST_SENT)
        self._congestion = Congestion(least_sent=least)  # 429s
        self._capacity = Congestion(self._congestion, least)  # 503s, of the same requests sent
        self.changes: list[RateChange] = []  # the first cuts of the rate (or undone) and the latest
        self.changed = 0  # how many in all
        self._successes = 0
        self._last_cut_at = -math.inf
        self.resume_at = 0.0  # the shared cool-down: nothing departs before this loop time
        self._holds = 0  # how many cool-downs have begun
        self.request_ceiling: float | None = None  # requests/s, from headers
        self.token_ceiling: float | None = None  # tokens/s, from headers
        self._recent: deque[float] = deque()  # departure times within the last second

        self._pace: float | None = None  # the pacer's rate, requests/s; None: not paced
        self.rate: float | None = None  # the departure rate now allowed; None: only concurrency bounds it
        self._repace()

    def _repace(self) -> None:
        """Work out the pacing rate again; called whenever one of its inputs changes."""
        rates = [self.adaptive_rate, self.request_ceiling]
        mean = self.estimator.mean_tokens
        if self.token_ceiling is not None and mean:
            rates.append(self.token_ceiling / mean)
        present = [r for r in rates if r is not None]
        self._pace = max(MIN_RATE, min(present)) if present else None
        allowed = [r for r in (self._pace, self.rpm / 60 if self.rpm else None) if r is not None]
        self.rate = min(allowed) if allowed else None
        self._paced = self._pace is not None or self._rpm_limiter is not None or self._tpm_limiter is not None

    async def acquire(self, request: ChatRequest) -> Permit:
        """A place in flight for one attempt, once every limit lets it depart; ``release`` it after.

        (A pair of calls rather than a context manager: this runs for every attempt, and a
        generator-based context manager costs more than all the rest of the throttle.)
        """
        # The estimate is only read by the tokens/min limit: without one it is not worked out.
        raw = self.estimator.raw(request) if self._tpm_limiter is not None else 0.0
        if self._in_flight < self.crowding.limit and not self._room:
            self._in_flight += 1
        else:  # in line, first come first served: a slot freed is handed to the first waiting
            waiter = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled():  # handed a slot, then cancelled: it goes to the next
                    self.release()
                raise
        now = asyncio.get_running_loop().time()
        if self._paced or self.resume_at > now:  # else nothing holds it: no coroutine to make
            try:
                await self._admit(raw * self.estimator.ratio)
            except BaseException:
                self.release()
                raise
            now = asyncio.get_running_loop().time()
        self._recent.append(now)
        self._congestion.departed(now)
        self._recent_rate(now)  # drop departures older than a second, so memory stays flat
        self.crowding.departed()
        return Permit(now, raw)

    def release(self) -> None:
        self._in_flight -= 1
        self._wake()

    @property
    def crowded(self) -> str | None:
        """When and why fewer requests went at once than asked, for the summary."""
        return self.crowding.note

    @property
    def paced(self) -> str | None:
        """Each cut of the rate and each undone, when and why, and the rate allowed at the end."""
        if not self.changes:
            return None
        told = [_change_text(change) for change in self.changes[:CHANGES_TOLD]]
        if self.changed > CHANGES_TOLD:
            told.append(f"{self.changed - CHANGES_TOLD:,} more, the latest {_change_text(self.changes[-1])}")
        now = f"{self.rate:,.1f}/s" if self.rate is not None else "no bound but concurrency"
        return f"{'; '.join(told)}; allowed {now} at the end"

    def _changed(self, change: RateChange) -> None:
        """Kept: the first few, told one by one, and the latest (a storm of them stays small)."""
        self.changed += 1
        if len(self.changes) > CHANGES_TOLD:
            self.changes.pop()
        self.changes.append(change)

    @property
    def last_cut(self) -> str | None:
        """The latest change of the rate, for the progress lines."""
        return _change_text(self.changes[-1]) if self.changes else None

    def _wake(self) -> None:
        """Hand the slots open to attempts waiting, in the order they came."""
        while self._room and self._in_flight < self.crowding.limit:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._in_flight += 1

    @property
    def held_s(self) -> float:
        """How long every request still waits for the server's limit to reset (0: none)."""
        return max(0.0, self.resume_at - asyncio.get_running_loop().time())

    async def _admit(self, cost: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while (wait := self.resume_at - loop.time()) > 0:
                await asyncio.sleep(wait)
            holds = self._holds
            if self._rpm_limiter is not None:
                await self._rpm_limiter.acquire()
            if self._tpm_limiter is not None and self.tpm is not None:
                await self._tpm_limiter.acquire(min(cost, self.tpm))
            if self._pace is not None:
                delay = self._pacer.reserve(loop.time(), self._pace)
                if delay > 0:
                    await asyncio.sleep(delay)
            if holds == self._holds:
                return
            # A hold began while this request waited: it waits out the hold and is paced again,
            # giving up the capacity it took (never more than the limits).

    def succeeded(self, permit: Permit, result: ChatResult) -> None:
        if result.rate is not None:
            self._learn(result.rate)
        total = result.usage.total_tokens
        if total is not None:
            self.estimator.observe(permit.raw_cost, total)
            if self.token_ceiling is not None:  # the mean answer size sets the pace
                self._repace()
        crowding = self.crowding
        if (self.adaptive_rate is None and crowding.limit >= crowding.asked and not self._congestion.reviewing
                and not self._capacity.reviewing):  # fmt: skip
            return  # nothing was cut: nothing to judge, reopen or raise (every answer passes here)
        now = asyncio.get_running_loop().time()
        self._answered(now)
        if crowding.succeeded(now):
            self._wake()
        if self.adaptive_rate is not None and not (self._congestion.reviewing or self._capacity.reviewing):
            self._successes += 1  # (not while a cut is judged: the rate it is judged at holds still)
            if self._successes >= max(1.0, self.adaptive_rate):  # about a second's worth
                self._successes = 0
                self.adaptive_rate += self._step
                if self.request_ceiling is not None:
                    self.adaptive_rate = min(self.adaptive_rate, self.request_ceiling)
                self._repace()

    def failed(self, permit: Permit, error: RequestError) -> None:
        if error.rate is not None:
            self._learn(error.rate)
        now = asyncio.get_running_loop().time()
        self.crowding.failed(now, permit.dispatched_at, error, self._in_flight)
        limited = error.error_type == RATE_LIMITED
        if not (limited or error.busy):
            if error.status is not None:
                self._answered(now)
            return
        signal = self._congestion if limited else self._capacity
        signal.limited(permit.dispatched_at)
        self._answered(now)
        ceiling = self.request_ceiling if limited else None
        over_ceiling = ceiling is not None and self._recent_rate(now) > ceiling
        ours = signal.ours(now)
        if not (over_ceiling or ours):
            error.lone = True  # our rate did not cause it: only its own request waits (the retry policy)
            return
        hint = error.rate.wait_s if error.rate is not None else None
        self._hold_until(now + (hint if hint is not None else DEFAULT_COOLDOWN_S))
        if permit.dispatched_at <= self._last_cut_at:
            return  # of a congestion event already answered: once per event, not per response
        before = self.adaptive_rate
        base = before if before is not None else max(self._recent_rate(now), signal.speed)
        allowed = self.rate
        if ceiling is not None and base > ceiling:
            # Faster than the limit the headers state: that limit is the answer (no share to judge)
            self.adaptive_rate = ceiling
            why = f"faster than the {ceiling * 60:,.0f} requests/min the server's headers state"
        elif ours:
            # At or under the stated limit, it is not the whole story (dynamic limits, shared keys)
            self.adaptive_rate = max(MIN_RATE, base * min(BETA, signal.passing))
            why = f"{signal.evidence} {'429' if limited else '503'}"
            signal.cut(now, before, self.resume_at, base)
        else:
            return  # a burst over the stated limit, already paced at it: the hold is the answer
        self._step = max(MIN_RATE, self.adaptive_rate * STEP_SHARE)
        self._successes = 0
        self._last_cut_at = now
        self._repace()
        if self.rate != allowed:  # (already paced at the stated limit, a cut to it changes nothing)
            self._changed(RateChange(time.time(), allowed if allowed is not None else base, self.rate, why))

    def _answered(self, now: float) -> None:
        for signal, what in ((self._congestion, "429s"), (self._capacity, "503s")):
            wrong, rate, after = signal.review(now)
            if wrong:  # the cut did not lessen the 429s: back to the rate before it
                allowed = self.rate
                self.adaptive_rate = rate
                self._step = max(MIN_RATE, (rate or 0.0) * STEP_SHARE)
                self._repace()
                why = f"undone: the share of {what} did not follow the rate ({after:.0%} after the cut)"
                self._changed(RateChange(time.time(), allowed, self.rate, why))

    def _hold_until(self, when: float) -> None:
        # A hold of next to nothing ("x-ratelimit-reset: 0.000") voids no reservation: it would
        # set the pacer back to now, and let everyone waiting go at once, into the same limit.
        if when > self.resume_at and when - asyncio.get_running_loop().time() >= LEAST_HOLD_S:
            self.resume_at = when
            self._pacer.next_at = when
            self._holds += 1  # reservations made before the hold are void

    def _recent_rate(self, now: float) -> float:
        """Departures in the last second: the rate that just proved too fast."""
        recent = self._recent
        while recent and recent[0] < now - 1.0:
            recent.popleft()
        return max(float(len(recent)), MIN_RATE)

    def _learn(self, info: RateInfo) -> None:
        if info.request_limit:
            ceiling, before = info.request_limit / 60.0, self.request_ceiling
            self.request_ceiling = ceiling
            if before is not None and abs(ceiling - before) > 0.05 * before:  # the stated limit moved
                why = f"the server's headers state {info.request_limit:,.0f} requests/min, {before * 60:,.0f} before"
                self._changed(RateChange(time.time(), before, ceiling, why))
            if self.adaptive_rate is not None:
                # a limit the rate was held at that rose (Together's dynamic limits grow with
                # traffic): the rate goes with it; cuts below it, for 429s of its own, stand
                held = before is not None and ceiling > before and self.adaptive_rate >= 0.9 * before
                self.adaptive_rate = ceiling if held else min(self.adaptive_rate, ceiling)
        if info.token_limit:
            self.token_ceiling = info.token_limit / 60.0
        if info.request_limit or info.token_limit:
            self._repace()
        now = asyncio.get_running_loop().time()
        # Out of requests or tokens until a stated reset: hold everyone until then (no rate cut),
        # for HINT_CAP_S at most: a reset further off is more likely a wrong header than a plan.
        if info.requests_remaining == 0 and info.requests_reset_s:
            self._hold_until(now + min(info.requests_reset_s, HINT_CAP_S))
        mean = self.estimator.mean_tokens or 1.0
        if info.tokens_remaining is not None and info.tokens_remaining < mean and info.tokens_reset_s:
            self._hold_until(now + min(info.tokens_reset_s, HINT_CAP_S))


def _change_text(change: RateChange) -> str:
    """'at 12:03:05 UTC from 80.0/s to 56.0/s: 12 of 40 requests sent in 2.0 s answered 429'."""
    at = time.strftime("%H:%M:%S UTC", time.gmtime(change.at))
    before = f"{change.before:,.1f}/s" if change.before is not None else "no bound"
    after = f"{change.after:,.1f}/s" if change.after is not None else "no bound but concurrency"
    return f"at {at} from {before} to {after}: {change.why}"


def _half_second_bucket(rpm: int) -> tuple[float, float]:
    """(max_rate, time_period) for aiolimiter: half a second's worth of requests, at least one.

    Half, not a whole second: a server enforcing per second then always keeps half its bucket
    spare, so clock skew between us and it never turns into a 429 (which would cost a cool-down).
    """
    burst = max(1.0, rpm / 120.0)
    return burst, burst * 60.0 / rpm
