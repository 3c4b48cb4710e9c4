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
import bisect
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from .errors import RATE_LIMITED, SERVER_ERROR, STREAM_TRUNCATED, TIMEOUT, RequestError
from .money import DEFAULT_COMPLETION_TOKENS, likely
from .records import ChatRequest, ChatResult
from .retry import HINT_CAP_S, hint_seconds, reset_seconds

BETA = 0.7  # multiplicative decrease on a 429 ...
SPEED_SPAN_S = 1.0  # a window's rate is taken over this long at least (a run's first burst leaves at once)
LEAST_SENT = 8  # requests in a window before its 429s are judged (fewer when fewer go at once)
DEEPEST_CUT = 0.25  # ... or down to the share the limit let through, to a quarter at most at once ...
MARGIN = 0.9  # ... and a little under it, since that share is a guess
STEP_SHARE = 0.1  # additive increase per second of successes, as a share of the rate after the cut
MIN_RATE = 0.05  # requests/s: never stop altogether
DEFAULT_COOLDOWN_S = 1.0  # when a 429 carries no hint
LEAST_HOLD_S = 0.01
CHANGES_TOLD = 4  # cuts of the rate the summary tells one by one


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What a provider's headers say about its limits, per minute, in both dialects."""

    request_limit: float | None = None
    requests_remaining: float | None = None
    requests_reset_s: float | None = None
    token_limit: float | None = None
    tokens_remaining: float | None = None
    tokens_reset_s: float | None = None


def read_rate_headers(headers: Mapping[str, str]) -> RateInfo:
    """Together (``x-ratelimit-limit``, ``x-tokenlimit-*``, ``-dynamic`` variants preferred) and
    OpenAI (``x-ratelimit-limit-requests``, ``x-ratelimit-reset-tokens: 6m0s`` ...)."""

    def number(*names: str) -> float | None:
        for name in names:
            if name in headers:
                try:
                    value = float(headers[name])
                except ValueError:
                    continue
                if math.isfinite(value) and value >= 0:
                    return value
        return None

    def seconds(*names: str) -> float | None:
        for name in names:
            if name in headers:
                value = reset_seconds(headers[name])
                if value is not None:
                    return value
        return None

    return RateInfo(
        request_limit=number("x-ratelimit-limit-requests", "x-ratelimit-limit-dynamic", "x-ratelimit-limit"),
        requests_remaining=number(
            "x-ratelimit-remaining-requests", "x-ratelimit-remaining-dynamic", "x-ratelimit-remaining"
        ),
        requests_reset_s=seconds("x-ratelimit-reset-requests", "x-ratelimit-reset"),
        token_limit=number("x-ratelimit-limit-tokens", "x-tokenlimit-limit-dynamic", "x-tokenlimit-limit"),
        tokens_remaining=number(
            "x-ratelimit-remaining-tokens", "x-tokenlimit-remaining-dynamic", "x-tokenlimit-remaining"
        ),
        tokens_reset_s=seconds("x-ratelimit-reset-tokens"),
    )


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


class Congestion:
    """Tells the 429s (or 503s) our own rate causes from those it does not.

    Providers answer a share of requests 429 or 503 whatever the rate (Together does when
    capacity is short). Cutting the rate and holding every request for each of those collapses a
    job: at a lower rate fewer of them arrive per second, which looks like the cut worked. So
    they are judged by their *share* of the requests sent, never their count. The share of lone
    429s over the last ``LONG_S`` seconds (before the window judged) is the background: what the
    provider answers so anyway, re-estimated as the run goes. Before any request says otherwise
    it is taken as ``PRIOR_SHARE``, worth ``PRIOR_WEIGHT`` requests, so the first burst of a
    run, where chance is widest, needs a share well above any provider's background. A 429 is
    ours when, of the requests sent lately (the last ``WINDOW_S`` seconds, or the last
    ``WINDOW_REQUESTS`` when that is more), at least ``MIN_LIMITED`` answered so, at a share
    above the background by ``FLOOR`` and by ``ABOVE`` standard errors. Shares count requests by
    when they were sent, not when answers came: a 429 comes back at once, an answer takes seconds.

    Every cut is judged a little later, by whether the share followed the rate. Over a limit, the
    share is ``1 - limit/rate``: slowing down makes it fall clearly, or it stays high while the
    rate is still far over. Background 429s keep their share whatever the rate. A cut after which
    the share did neither is undone at once (with the cuts made while it was judged), and the
    429s that caused it count as background from then on.
    """

    WINDOW_S = 2.0
    WINDOW_REQUESTS = 20
    MIN_LIMITED = 2
    FLOOR = 0.1  # a share of 429s above the background that means "too fast" ...
    CHANCE = 0.005  # ... when the background would give as many this rarely, at most
    PRIOR_SHARE = 0.2
    PRIOR_WEIGHT = 25
    LEAST_SHARE = 0.01  # standard errors are taken at this background at least (none would make any 429 ours)
    LONG_S = 30.0  # the background is of the requests sent this long before the window
    BEFORE_S = 10.0  # a cut is judged against the share over this long before it ...
    REVIEW_S = 2.0  # ... and this long after it (once its cool-down ended), at the soonest ...
    REVIEW_REQUESTS = 60  # ... on as many requests sent at least ...
    REVIEW_LONG_S = 10.0  # ... or on a window's worth, once this long has passed (a slow rate)
    FELL = 2.0  # the cut was right if the share fell by this many standard errors ...
    STILL_OVER = 0.5  # ... or stayed above this (still far over the limit)
    KEPT = 8192  # events remembered of each kind

    def __init__(self, sending: Congestion | None = None, least_sent: int = 1) -> None:
        """``sending``: another signal of the same requests, whose departures this one reads.
        ``least_sent``: requests sent in a window before its share says anything (a run's first
        two requests both refused are too few to judge a rate by)."""
        self.least_sent = least_sent
        # sorted times, the newest KEPT to 2 * KEPT of each
        self._sent: list[float] = sending._sent if sending is not None else []  # when requests departed
        self._own_sent = sending is None
        self.evidence = ""  # why the latest 429 was ours: "12 of 40 requests sent in 2.0 s answered"
        self.passing = BETA  # the share of requests the limit let through then
        self.speed = 0.0
        self.judged_against: float | None = None  # the background the latest 429 found ours was judged against
        # Once a cut is kept, the rate is held near a limit and goes over it as it rises, so the
        # 429s then are not background: it is fixed at the cut and only lowered by later ones.
        self._fixed: float | None = None
        self._limited: list[float] = []  # when the requests answered 429 departed
        self._ours: list[list[float]] = []  # spans of sending times whose 429s were judged ours, apart and in order
        # (cut at, judged from, rate before, the window that found 429s ours: its start and share, requests/s then)
        self._review: tuple[float, float, float | None, float, float, float] | None = None
        self._kept: list[tuple[float | None, float, float]] = []  # cuts kept: (rate before, requests/s after, share after)

    def departed(self, now: float) -> None:
        if self._own_sent:
            _keep(self._sent, now, self.KEPT)

    def limited(self, sent_at: float) -> None:
        """A 429, to the request sent at ``sent_at``."""
        _keep(self._limited, sent_at, self.KEPT)

    def _count(self, since: float, until: float = math.inf) -> tuple[int, int]:
        """Of the requests sent in [since, until): how many were answered 429, how many sent."""
        return _between(self._limited, since, until), _between(self._sent, since, until)

    def _start(self, until: float, seconds: float, requests: int) -> float:
        """The start of the last ``seconds`` before ``until``, or of its last ``requests`` sent."""
        since = until - seconds
        sent = self._sent
        index = bisect.bisect_right(sent, until) - requests
        return min(since, sent[index]) if index >= 0 else -math.inf

    def background(self, until: float) -> float:
        """The share of requests sent in the ``LONG_S`` before ``until`` answered 429 though our
        rate was not the cause, with the prior's weight (or the share fixed by a kept cut)."""
        if self._fixed is not None:
            return self._fixed
        share, sent = self._measured(until)
        return (share * sent + self.PRIOR_SHARE * self.PRIOR_WEIGHT) / (sent + self.PRIOR_WEIGHT)

    def _measured(self, until: float) -> tuple[float, int]:
        """The share of lone 429s in the ``LONG_S`` before ``until``, without the prior, and of how many requests."""
        since = until - self.LONG_S
        limited, sent = self._count(since, until)
        for start, end in self._ours:  # what was sent while the 429s were ours says nothing of the background
            if start < until and end > since:
                limited -= _between(self._limited, max(since, start), min(until, end))
                sent -= _between(self._sent, max(since, start), min(until, end))
        return (limited / sent if sent > 0 else 0.0), max(sent, 0)

    def ours(self, now: float) -> bool:
        """Whether the latest 429 is one our rate caused; if so, it and its window's are marked ours."""
        start = self._start(now, self.WINDOW_S, self.WINDOW_REQUESTS)
        limited, sent = self._count(start)
        if limited < self.MIN_LIMITED or not sent:
            return False
        background = self.background(start)
        share = limited / sent
        if share < background + self.FLOOR:
            return False
        if self._review is not None and share < self.STILL_OVER:
            return False  # a cut is judged: the next waits for its verdict, unless still far over the limit
        if sent < self.least_sent or _tail(limited, sent, max(background, self.LEAST_SHARE)) > self.CHANCE:
            return False
        self.judged_against = background
        sent_from = self._sent[bisect.bisect_left(self._sent, start)]
        self.evidence = f"{limited:,} of {sent:,} requests sent in {max(now - sent_from, 0.1):.1f} s answered"
        # Over a limit, the share let through is limit/rate: the cut goes there, when deeper than BETA
        self.passing = max(DEEPEST_CUT, MARGIN * (1 - share) / (1 - background))
        self.speed = sent / max(now - sent_from, SPEED_SPAN_S)  # requests/s the window went at
        spans = self._ours
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], now + 1e-9)
        else:
            spans.append([start, now + 1e-9])
            if len(spans) > self.KEPT:
                del spans[: len(spans) // 2]
        return True

    def cut(self, now: float, rate_before: float | None, held_until: float, speed: float) -> None:
        """A cut from ``rate_before`` (None: unbounded; ``speed``: the requests/s sent then), judged
        from the end of its cool-down (``held_until``) against the requests sent before it."""
        if self._review is None:  # cuts made while one is judged are judged with it
            window = self._start(now, self.WINDOW_S, self.WINDOW_REQUESTS)
            self._fixed = self.judged_against if self.judged_against is not None else self.background(window)
            self.judged_against = None
            limited, sent = self._count(window)
            first = self._sent[bisect.bisect_left(self._sent, window)] if sent else now
            speed = sent / (now - first) if now - first >= 0.5 else speed  # what the window was sent at
            self._review = (now, max(now, held_until), rate_before, window, limited / sent if sent else 1.0, speed)

    @property
    def reviewing(self) -> bool:
        """Whether a cut waits to be judged."""
        return self._review is not None

    def review(self, now: float) -> tuple[bool, float | None, float]:
        """Once a cut can be judged: whether it was wrong, the rate to go back to, and the share after it."""
        if self._review is None or now - self._review[1] < self.REVIEW_S:
            return False, None, 0.0
        at, since, rate, window, _, speed = self._review
        limited_after, sent_after = self._count(since)
        if sent_after < (self.REVIEW_REQUESTS if now - since < self.REVIEW_LONG_S else self.WINDOW_REQUESTS):
            return False, None, 0.0
        self._review = None
        # Judged three ways. Still far over the limit: kept. The share fell below the window's
        # that found the 429s ours: kept. Else, the share after the cut is what the provider
        # answers anyway: kept if that is the background the window was judged against (the cut
        # brought the share back to it), undone if clearly above it (the background was wrong,
        # and the window's 429s were the provider's as well).
        limited_before, sent_before = self._count(window, at)
        after = limited_after / sent_after
        # Over a limit, the share is 1 - limit/rate: at the rate sent since, the window's share
        # would have become this. Closer to it than to the window's own share, the share followed the rate.
        before = limited_before / sent_before if sent_before else 1.0
        followed = max(0.0, 1 - (1 - before) * speed / (sent_after / max(now - since, 1e-3)))
        tracked = abs(after - followed) < abs(after - before)
        background = self.background(window)
        least = max(background, self.LEAST_SHARE)
        above = after >= background + self.FLOOR / 2 and (after - background) / math.sqrt(
            least * (1 - least) / sent_after) >= self.FELL  # fmt: skip
        speed_after = sent_after / max(now - since, 1e-3)
        kept = after >= self.STILL_OVER or not above or tracked or (sent_before and _fell(
            limited_before, sent_before, limited_after, sent_after) >= self.FELL)  # fmt: skip
        # Across cuts: a share no lower at a much lower rate than after an earlier cut did not
        # follow the rate, whatever each cut looked like alone; back to the rate of that cut.
        earlier = next((k for k in self._kept if k[1] >= speed_after / BETA and k[2] <= after + self.FLOOR / 2), None)
        if kept and earlier is None:
            # Once a second cut is kept, a limit is confirmed and the prior's caution is spent;
            # one, at a run's start, may still be chance.
            measured, of = self._measured(window)
            spent = 0.0 if self._kept else 1.0
            self._fixed = min(background, after, measured if of >= self.WINDOW_REQUESTS else spent)
            self._kept.append((rate, speed_after, after))
            return False, None, after
        if earlier is not None:
            rate = earlier[0]
            del self._kept[self._kept.index(earlier):]
        # back to no bound at all, the background is measured again; else it is at least this
        self._fixed = None if rate is None else max(background, after)
        spans = self._ours  # not ours after all: background from now on
        while spans and spans[-1][0] >= window:
            spans.pop()
        if spans and spans[-1][1] > window:
            spans[-1][1] = window
        return True, rate, after


def _tail(limited: int, sent: int, share: float) -> float:
    """The chance that ``limited`` or more of ``sent`` requests are refused when each is with
    chance ``share`` (the binomial tail, summed in logarithms: windows hold thousands)."""
    if limited <= 0:
        return 1.0
    if share >= 1.0:
        return 1.0
    log_p, log_q = math.log(share), math.log1p(-share)
    base = math.lgamma(sent + 1)
    total = 0.0
    for count in range(limited, sent + 1):
        term = math.exp(base - math.lgamma(count + 1) - math.lgamma(sent - count + 1) + count * log_p
                        + (sent - count) * log_q)  # fmt: skip
        total += term
        if term < total * 1e-12:
            break
    return min(total, 1.0)


def _between(times: list[float], since: float, until: float = math.inf) -> int:
    """How many of the sorted ``times`` lie in [since, until)."""
    return bisect.bisect_left(times, until) - bisect.bisect_left(times, since)


def _keep(times: list[float], when: float, kept: int) -> None:
    """Adds ``when`` in order, forgetting the oldest ``kept`` once there are twice as many."""
    if not times or when >= times[-1]:
        times.append(when)
    else:
        bisect.insort(times, when)
    if len(times) > 2 * kept:
        del times[:kept]


def _fell(limited_before: int, sent_before: int, limited_after: int, sent_after: int) -> float:
    """How many standard errors the share of 429s fell by (a two-proportion z statistic)."""
    pooled = (limited_before + limited_after) / (sent_before + sent_after)
    error = math.sqrt(pooled * (1 - pooled) * (1 / sent_before + 1 / sent_after))
    drop = limited_before / sent_before - limited_after / sent_after
    return drop / error if error else (math.inf if drop > 0 else 0.0)


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


CROWDED_AFTER = 2  # failures since the slots last changed, at least, ...
CROWDED_SHARE = 0.5  # ... and this share of the requests sent since: a server that takes fewer fails most
PROVISIONAL_WINDOWS = 5  # clean windows that keep a cut made at a first stream cut that came late
CROWDED_SAMPLE = 8  # 503s: of as many requests sent since at least (or the slots open, when more)
OPEN_SHARE = 0.1  # a slot opens again when fewer than this share of a whole window failed ...
OPEN_AFTER_S = 30.0  # ... and this long after a cut; doubled each time an opened slot brought the failures back
OPEN_AFTER_MAX_S = 600.0
WORDS = {STREAM_TRUNCATED: ("cut", "stream", "streams"), TIMEOUT: ("timed out on", "request", "requests"),
         SERVER_ERROR: ("answered 503 to", "request", "requests")}  # fmt: skip


class Crowding:
    """How many requests the server takes at once. Streams cut short, timeouts and 503s, from
    requests that met others in flight, say it takes fewer than it is sent (llama.cpp's server
    serves as many as it has slots and cuts a stream in flight when one more arrives): when most
    recent requests fail so, the slots are halved, to one at least, and each later failure of
    the requests sent before that cut brings them down to the requests still in flight, so they
    settle at what the server serves (the requests it did not cut), not below. A provider failing now and then, whatever the
    concurrency, fails far fewer than that and is left alone. A slot opens again once a whole
    window of answers is nearly clean; one that brings the failures back closes at its first
    failure, and the wait before the next doubles, so a server that really serves one at a time costs a retry now
    and then, not one per row.
    """

    def __init__(self, concurrency: int) -> None:
        self.asked = concurrency
        self.limit = concurrency  # slots open now
        self.lowest = concurrency
        self._recent: deque[int] = deque()  # since the slots last changed: 1 a failure, 0 an answer
        self._failures = 0  # ones in _recent
        self._window = 0
        self._sent = 0  # requests sent since the slots last changed ...
        self._failed = 0  # ... and of them, those that failed so
        self._cut_at = -math.inf
        self._open_after = OPEN_AFTER_S
        self._opened = False  # a slot was opened since the last cut
        self.seen: dict[str, int] = {}  # failures taken as crowding, by error type
        self.crowd = 0  # requests in flight when the first cut was decided
        self._opened_from: int | None = None  # the slots that served cleanly before the last one opened
        # A cut at the first stream cut short, still to be judged: (slots before it, clean windows still asked)
        self._provisional: tuple[int, int] | None = None
        self._bad = concurrency + 1  # the fewest slots known to fail (lately)
        self._floor = 1
        self.background = 0.0  # the share that failed so whatever the slots, once a cut was undone for it
        self.undone = 0  # cuts undone
        self._forget()

    def _record(self, failed: int) -> None:
        recent = self._recent
        if len(recent) >= self._window:
            self._failures -= recent.popleft()
        recent.append(failed)
        self._failures += failed

    def _forget(self) -> None:
        """Evidence is of the slots it was gathered at: it starts again when they change."""
        self._recent.clear()
        self._failures = 0
        self._window = max(20, 10 * self.limit)
        self._sent = self._failed = 0

    def departed(self) -> None:
        self._sent += 1

    def failed(self, now: float, permit: Permit, error: RequestError, crowd: int) -> bool:
        """Whether the slots were cut. ``crowd``: requests in flight as it failed, itself included
        (the one cut short is often the first sent, alone, so what it met counts, not what it left with)."""
        kind = error.error_type
        if not (kind in (STREAM_TRUNCATED, TIMEOUT) or (kind == SERVER_ERROR and error.status == 503)):
            return False
        if crowd < 2:  # alone, it was not crowded out: a cut still judged hears that failures go on
            if self._provisional is not None and permit.dispatched_at >= self._cut_at:
                self._record(1)
            return False
        self.seen[kind] = self.seen.get(kind, 0) + 1
        if permit.dispatched_at < self._cut_at:  # sent before the last cut, which answered it ...
            # ... but a server that cut one more stream kept fewer than that
            if kind == STREAM_TRUNCATED and self._opened_from is None and crowd - 1 < self.limit:
                self.limit = max(1, crowd - 1, self._floor)
                self.lowest = min(self.lowest, self.limit)
                self._window = max(20, 10 * self.limit)
                return True
            return False
        self._record(1)
        self._failed += 1
        if (kind == STREAM_TRUNCATED and not self.background and self._provisional is None
                and self._opened_from is None and self.limit > 1):  # fmt: skip
            # The first stream cut short among others: halved at once (a local server with fewer
            # slots cuts one per request too many). Judged on the windows of answers after it:
            # one, when it came within two rounds of requests; else a few, as a provider's now
            # and then would come later and rarer.
            self._provisional = (self.limit, 1 if self._sent <= 2 * self.limit else PROVISIONAL_WINDOWS)
            self._cut(now, max(1, self.limit // 2), self.limit)
            return True
        # Weighed against what was sent, not what came back: failures come back first (a 503 is
        # quick, an answer is not), so early on nearly everything back is a failure.
        opened = self._opened_from is not None  # a slot opened: its first failure answers it
        # Judged on a round of requests sent at these slots at least (503s come back at once, and
        # providers send some whatever the load: on a fuller sample)
        sample = max(self.limit, CROWDED_SAMPLE) if kind == SERVER_ERROR else self.limit  # a round's worth at least
        if (not opened and (self._failed < CROWDED_AFTER or self._failed < CROWDED_SHARE * self._sent
                           or self._sent < sample)) or self.limit <= 1:  # fmt: skip
            return False
        # one slot more than served cleanly brought failures back: back to that many; else halve
        self._cut(now, self._opened_from if self._opened_from is not None else max(1, min(self.limit, crowd) // 2),
                  self.limit)
        return True

    def _cut(self, now: float, limit: int, crowd: int) -> None:
        # what the slots may be tried at again, halving the distance each time (N slots found in a
        # few tries), and how low later failures of the requests sent before may bring them
        self._bad = min(self._bad, self.limit)
        self._floor = max(1, self.limit // 4)
        self.crowd = self.crowd or crowd
        self.limit = limit
        self._opened_from = None
        self.lowest = min(self.lowest, self.limit)
        self._forget()
        self._cut_at = now
        if self._opened:
            self._open_after = min(2 * self._open_after, OPEN_AFTER_MAX_S)
        self._opened = False

    def _judge(self, now: float) -> bool:
        """A cut made at a first stream cut, once a window of answers after it is in: kept when
        the window is clean (or fails most: the slots are cut again meanwhile), undone when
        failures went on at a share no crowding explains."""
        assert self._provisional is not None
        before, windows = self._provisional
        share = self._failures / len(self._recent)
        if share == 0:
            self._provisional = (before, windows - 1) if windows > 1 else None
            self._recent.clear()
            self._failures = 0
            return False
        if share >= CROWDED_SHARE:
            return False
        self._provisional = None
        self.background = max(self.background, share)
        self.undone += 1
        self.limit = before
        self._forget()
        self._cut_at = now
        return True

    def succeeded(self, now: float) -> bool:
        """Whether a slot opened again."""
        if self.limit >= self.asked:  # no slot closed: the window only matters once one is
            return False
        self._record(0)
        if self._provisional is not None:
            return self._judge(now) if len(self._recent) >= self._window else False
        # Between the slots that serve and the fewest that failed, the middle is tried after a
        # clean window (N slots found in a few tries); next to them, one more after a long wait.
        searching = self._bad - self.limit > 1
        if now - self._cut_at < (0.0 if searching else self._open_after):
            return False
        if len(self._recent) < self._window or self._failures >= OPEN_SHARE * self._window:
            return False
        self._opened_from = self.limit
        self.limit = min(self.asked, self.limit + max(1, (self._bad - self.limit) // 2) if searching else self.limit + 1)
        if not searching:
            self._bad = self.asked + 1  # long after: what failed then may not now
        self._opened = True
        self._forget()  # what the server does with one more is new evidence
        return True

    @property
    def note(self) -> str | None:
        """What the summary says of it: "the server cut 12 streams when sent 2 at once; ran at 1"."""
        if self.lowest >= self.asked:
            return None
        what = ", ".join(f"{WORDS[kind][0]} {count:,} {WORDS[kind][1] if count == 1 else WORDS[kind][2]}"
                         for kind, count in self.seen.items())  # fmt: skip
        if self.undone and self.limit >= self.asked:
            return (f"the server {what} when sent {self.crowd} at once; {self.lowest} at once failed as often "
                    f"({self.background:.0%}), so {self.asked} went on")
        now = f" (now {self.limit})" if self.limit != self.lowest else ""
        return f"the server {what} when sent {self.crowd} at once; ran at {self.lowest}{now}"


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
        self.changes: list[RateChange] = []  # every cut of the rate, and every cut undone
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
        if len(self.changes) > CHANGES_TOLD:
            told.append(f"{len(self.changes) - CHANGES_TOLD:,} more")
        now = f"{self.rate:,.1f}/s" if self.rate is not None else "no bound but concurrency"
        return f"{'; '.join(told)}; allowed {now} at the end"

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
        if result.headers:
            self._learn(result.headers)
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
        if error.headers:
            self._learn(error.headers)
        now = asyncio.get_running_loop().time()
        self.crowding.failed(now, permit, error, self._in_flight)
        limited = error.error_type == RATE_LIMITED
        if not (limited or error.status == 503):
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
        hint = hint_seconds(error.headers)
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
        self.changes.append(RateChange(time.time(), allowed if allowed is not None else base, self.rate, why))

    def _answered(self, now: float) -> None:
        for signal, what in ((self._congestion, "429s"), (self._capacity, "503s")):
            wrong, rate, after = signal.review(now)
            if wrong:  # the cut did not lessen the 429s: back to the rate before it
                allowed = self.rate
                self.adaptive_rate = rate
                self._step = max(MIN_RATE, (rate or 0.0) * STEP_SHARE)
                self._repace()
                why = f"undone: the share of {what} did not follow the rate ({after:.0%} after the cut)"
                self.changes.append(RateChange(time.time(), allowed, self.rate, why))

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

    def _learn(self, headers: Mapping[str, str]) -> None:
        info = read_rate_headers(headers)
        if info.request_limit:
            ceiling, before = info.request_limit / 60.0, self.request_ceiling
            self.request_ceiling = ceiling
            if before is not None and abs(ceiling - before) > 0.05 * before:  # the stated limit moved
                why = f"the server's headers state {info.request_limit:,.0f} requests/min, {before * 60:,.0f} before"
                self.changes.append(RateChange(time.time(), before, ceiling, why))
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
