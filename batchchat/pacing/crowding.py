"""How many requests a server takes at once, told from the streams it cuts short, the requests
that time out and the 503s it answers when sent more."""

from __future__ import annotations

import math
from collections import deque

from ..core.errors import SERVER_ERROR, STREAM_TRUNCATED, TIMEOUT, RequestError

CROWDED_AFTER = 2  # failures since the slots last changed, at least, ...
CROWDED_SHARE = 0.5  # ... and this share of the requests sent since: a server that takes fewer fails most
PROVISIONAL_WINDOWS = 5  # clean windows that keep a cut made at a first stream cut that came late
CROWDED_SAMPLE = 8  # 503s: of as many requests sent since at least (or the slots open, when more)
OPEN_SHARE = 0.1  # a slot opens again when fewer than this share of a whole window failed ...
OPEN_AFTER_S = 30.0  # ... and this long after a cut; doubled each time an opened slot brought the failures back
OPEN_AFTER_MAX_S = 600.0
WORDS = {STREAM_TRUNCATED: ("cut", "stream", "streams"), TIMEOUT: ("timed out on", "request", "requests")}  # fmt: skip


class Crowding:
    """How many requests the server takes at once. Streams cut short, timeouts and 503s, from
    requests that met others in flight, say it takes fewer than it is sent (llama.cpp's server
    serves as many as it has slots and cuts a stream in flight when one more arrives).

    The first stream cut short halves the slots at once; timeouts and 503s do when most of the
    requests sent since failed so. Each later cut of a stream sent before brings the slots down
    to the requests still in flight (the server kept those), not below a quarter of them. A cut
    made at a first stream cut is judged on the windows of answers after it, and undone when
    failures went on at a share no crowding explains (a provider failing now and then, whatever
    the concurrency): that share is the background from then on. Between the slots that serve
    cleanly and the fewest that failed, the middle is tried after each clean window, so N slots
    are found in a few tries; one more than that is tried after a long wait, which doubles each
    time it brought the failures back, so a server that really serves N costs a retry now and
    then, not one per row.
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
        self.seen: dict[str, int] = {}  # failures taken as crowding, by kind (a server error by its status)
        self.crowd = 0  # the slots open when the first cut was made
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
        self._sized()
        self._sent = self._failed = 0

    def _sized(self) -> None:
        """A window of answers to judge the slots by, the larger the more of them."""
        self._window = max(20, 10 * self.limit)

    def departed(self) -> None:
        self._sent += 1

    def failed(self, now: float, sent_at: float, error: RequestError, crowd: int) -> bool:
        """Whether the slots were cut. ``crowd``: requests in flight as it failed, itself included
        (the one cut short is often the first sent, alone, so what it met counts, not what it left with)."""
        kind = error.error_type
        if not (kind in (STREAM_TRUNCATED, TIMEOUT) or (kind == SERVER_ERROR and error.busy)):
            return False
        if crowd < 2:  # alone, it was not crowded out: a cut still judged hears that failures go on
            if self._provisional is not None and sent_at >= self._cut_at:
                self._record(1)
            return False
        # a server error as it was said: a 503, Anthropic's 529, or an overload said inside a stream
        said = error.overload
        told = kind if kind != SERVER_ERROR else "said it was overloaded to" if said == "overloaded" else f"answered {said} to"
        self.seen[told] = self.seen.get(told, 0) + 1
        if sent_at < self._cut_at:  # sent before the last cut, which answered it ...
            # ... but a server that cut one more stream kept fewer than that
            if kind == STREAM_TRUNCATED and self._opened_from is None and crowd - 1 < self.limit:
                self.limit = max(1, crowd - 1, self._floor)
                self.lowest = min(self.lowest, self.limit)
                self._sized()
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
            self._cut(now, max(1, self.limit // 2))
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
        self._cut(now, self._opened_from if self._opened_from is not None else max(1, min(self.limit, crowd) // 2))
        return True

    def _cut(self, now: float, limit: int) -> None:
        # the slots that failed (the middle up to them is tried next), how low later failures of
        # the requests sent before may bring them, and how many were sent at once, for the note
        self._bad = min(self._bad, self.limit)
        self._floor = max(1, self.limit // 4)
        self.crowd = self.crowd or self.limit
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
        step = max(1, (self._bad - self.limit) // 2) if searching else 1
        self.limit = min(self.asked, self.limit + step)
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
        what = ", ".join(f"{words[0]} {count:,} {words[1] if count == 1 else words[2]}"
                         for told, count in self.seen.items()
                         for words in [WORDS.get(told, (told, "request", "requests"))])  # fmt: skip
        if self.undone and self.limit >= self.asked:
            return (f"the server {what} when sent {self.crowd} at once; {self.lowest} at once failed as often "
                    f"({self.background:.0%}), so {self.asked} went on")
        now = f" (now {self.limit})" if self.limit != self.lowest else ""
        return f"the server {what} when sent {self.crowd} at once; ran at {self.lowest}{now}"
