"""Which 429s (or 503s) the client's own rate causes, told from those a provider sends whatever
the rate: by their share of the requests sent, against a background; and each cut judged."""

from __future__ import annotations

import bisect
import math

BETA = 0.7  # multiplicative decrease on a 429 ...
DEEPEST_CUT = 0.25  # ... or down to the share the limit let through, to a quarter at most at once ...
MARGIN = 0.9  # ... and a little under it, since that share is a guess
KEPT_CUTS = 64  # cuts kept, remembered to judge the next against
SPEED_SPAN_S = 1.0  # a window's rate is taken over this long at least (a run's first burst leaves at once)


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
    above the background by ``FLOOR``, and the background would give as many less often than
    ``CHANCE`` (the binomial tail). Shares count requests by when they were sent, not when
    answers came: a 429 comes back at once, an answer takes seconds.

    Every cut is judged a little later, by whether the share followed the rate. Over a limit, the
    share is ``1 - limit/rate``: slowing down makes it fall, to the background once under the
    limit, or it stays high while the rate is still far over. Background 429s keep their share
    whatever the rate. A cut after which the share stayed clearly above the background it was
    judged against, without falling, is undone at once (with the cuts made while it was judged),
    and the 429s that caused it count as background from then on; so is one whose share, at a
    much lower rate, is no lower than after an earlier cut. A cut kept fixes the background (the
    rate then rises until it goes over again, and those 429s are not background).
    """

    WINDOW_S = 2.0
    WINDOW_REQUESTS = 20
    MIN_LIMITED = 2
    FLOOR = 0.1  # a share of 429s above the background that means "too fast" ...
    CHANCE = 0.005  # ... when the background would give as many this rarely, at most
    PRIOR_SHARE = 0.2
    PRIOR_WEIGHT = 25
    LEAST_SHARE = 0.01  # chance is reckoned at this background at least (none would make any 429 ours)
    LONG_S = 30.0  # the background is of the requests sent this long before the window
    REVIEW_S = 2.0  # a cut is judged this long after it (once its cool-down ended), at the soonest ...
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
        # (cut at, judged from, rate before, the start of the window that found 429s ours, requests/s it went at)
        self._review: tuple[float, float, float | None, float, float] | None = None
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
            sent = _between(self._sent, window)
            first = self._sent[bisect.bisect_left(self._sent, window)] if sent else now
            speed = sent / (now - first) if now - first >= 0.5 else speed  # what the window was sent at
            self._review = (now, max(now, held_until), rate_before, window, speed)

    @property
    def reviewing(self) -> bool:
        """Whether a cut waits to be judged."""
        return self._review is not None

    def review(self, now: float) -> tuple[bool, float | None, float]:
        """Once a cut can be judged: whether it was wrong, the rate to go back to, and the share after it."""
        if self._review is None or now - self._review[1] < self.REVIEW_S:
            return False, None, 0.0
        at, since, rate, window, speed = self._review
        limited_after, sent_after = self._count(since)
        if sent_after < (self.REVIEW_REQUESTS if now - since < self.REVIEW_LONG_S else self.WINDOW_REQUESTS):
            return False, None, 0.0
        self._review = None
        # Kept when the share is still far over the limit, fell below the window's that found the
        # 429s ours, followed the rate (over a limit the share is 1 - limit/rate: at the rate
        # sent since, the window's share would have become this; closer to it than to the
        # window's own), or came back to the background the window was judged against. Undone
        # when none of these: clearly above that background, the background was wrong, and the
        # window's 429s were the provider's as well.
        limited_before, sent_before = self._count(window, at)
        after = limited_after / sent_after
        speed_after = sent_after / max(now - since, 1e-3)
        before = limited_before / sent_before if sent_before else 1.0
        followed = max(0.0, 1 - (1 - before) * speed / speed_after)
        tracked = abs(after - followed) < abs(after - before)
        background = self.background(window)
        least = max(background, self.LEAST_SHARE)
        above = after >= background + self.FLOOR / 2 and (after - background) / math.sqrt(
            least * (1 - least) / sent_after) >= self.FELL  # fmt: skip
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
            self._kept = [*self._kept[-KEPT_CUTS:], (rate, speed_after, after)]
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
