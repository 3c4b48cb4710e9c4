"""The terminal: every line the CLI prints goes through ``say``, and what a run and a chat show
while they go (progress, a streamed answer) is drawn here. Library code never prints; this is
the CLI's part of it, kept apart from the commands so ``cli.py`` holds only them."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING

from ..core.words import printable
from ..reports.text import batches_line, plan_lines, progress_line

if TYPE_CHECKING:
    from ..core.errors import RequestError
    from ..core.records import RowOutcome
    from ..execute.base import BatchProgress
    from ..output.progress import Bar
    from ..plan.plan import Plan
    from ..store.stats import Stats


def say(text: str = "", err: bool = False, nl: bool = True) -> None:
    """Every line the CLI prints goes through here: text from a server (answers, error bodies) is
    stripped of control characters, so an escape sequence can never drive the terminal."""
    stream = sys.stderr if err else sys.stdout
    print(printable(text), end="\n" if nl else "", file=stream, flush=err)


class Progress:
    """Progress on stderr unless quiet: a bar on a terminal; elsewhere (cron, nohup, CI logs) one
    plain line every ``every_s`` seconds, from a thread, so a log shows the run alive even while
    no request finishes."""

    def __init__(self, quiet: bool, every_s: float = 30.0) -> None:
        self.quiet = quiet
        self.every_s = every_s
        self.bar: Bar | None = None
        self.answered = 0  # requests this run finished
        self.stats: Stats | None = None
        self._plan: Plan | None = None
        self._began = 0.0
        self._done = threading.Event()
        self._ticker: threading.Thread | None = None
        self._stopping = False
        self._batches_line = ""
        self._batches_next = 0.0

    def started(self, plan: Plan) -> None:
        if self.quiet:
            return
        for line in plan_lines(plan):
            say(f"batchchat: {line}", err=True)
        if not plan.to_send:
            return
        if sys.stderr.isatty():
            from ..output.progress import Bar

            self.bar = Bar(sys.stderr)
            self.bar.started(plan)
        else:
            self._plan, self._began = plan, time.monotonic()
            self._ticker = threading.Thread(target=self._tick, name="batchchat-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        told: tuple[str | None, str | None] = (None, None)  # the rate's change and the crowding told so far
        while not self._done.wait(self.every_s):
            assert self._plan is not None
            elapsed = time.monotonic() - self._began
            counters = self.stats.counters if self.stats is not None else None
            news = (counters.last_cut, counters.crowded) if counters is not None else (None, None)
            fresh = (news[0] if news[0] != told[0] else None, news[1] if news[1] != told[1] else None)
            told = news
            line = progress_line(self._plan.to_send, self.stats, elapsed, self._stopping, news=fresh)
            say(f"batchchat: {line}", err=True)

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None:
        self.answered += 1
        self.stats = stats
        if self.bar is not None:
            self.bar.row_done(outcome, stats)

    def batches(self, progress: BatchProgress) -> None:
        """The provider's batches, as it reports them: a line when that changes, at most every
        few seconds (every ``every_s`` without a terminal)."""
        line = batches_line(progress)
        now = time.monotonic()
        if self.quiet or line == self._batches_line or now < self._batches_next:
            return
        self._batches_line, self._batches_next = line, now + (min(self.every_s, 5.0) if sys.stderr.isatty() else self.every_s)
        if self.bar is not None:
            self.bar.note(f"batchchat: {line}")
        else:
            say(f"batchchat: {line}", err=True)

    def stopping(self, grace_s: float) -> None:
        self._stopping = True
        if self.bar is not None:
            self.bar.stopping(grace_s)
        say(
            f"\nbatchchat: stopping: no new requests; those in flight have {grace_s:g} s to finish "
            "(Ctrl-C again to stop at once)",
            err=True,
        )

    def close(self) -> None:
        self._done.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Shown:
    """What a chat turn has printed: a streamed answer as it arrives, and each failed attempt."""

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.any = False  # whether this turn printed any of its answer

    def piece(self, text: str) -> None:
        self.any = True
        say(text, nl=False)
        sys.stdout.flush()

    def retrying(self, error: RequestError) -> None:
        if self.any:
            say("", err=True)
            self.any = False
        say(f"batchchat: that attempt failed ({error.error_type}: {error.message}); trying again", err=True)
