"""Progress: what a run tells whoever watches it (an ``Observer``), and a tqdm progress bar that
draws it, in a terminal or (``tqdm.auto``) a Jupyter notebook. The library draws a bar only when
asked (``progress=True``); the CLI draws one on a terminal. Library code prints nothing."""

from __future__ import annotations

import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..core.words import dollars

if TYPE_CHECKING:
    from ..core.records import RowOutcome
    from ..plan.plan import Plan
    from ..store.stats import Stats


class Observer(Protocol):
    """Receives a run's progress."""

    def started(self, plan: Plan) -> None: ...

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None: ...

    def stopping(self, grace_s: float) -> None: ...


class Silent:
    def started(self, plan: Plan) -> None:
        pass

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None:
        pass

    def stopping(self, grace_s: float) -> None:
        pass


def live_counters(stats: Stats) -> str:
    c = stats.counters
    rate = f"{c.rate:,.1f}/s" if c.rate is not None else "unlimited"
    text = f"rate={rate} 429s={c.rate_limited:,} retries={c.retries:,} tokens={stats.tokens:,} errors={stats.errors:,}"
    if c.invalid:
        text += f" invalid={c.invalid:,}"
    if stats.cost is not None:
        text += f" cost={dollars(stats.cost)}"
    waiting = c.waiting_until - time.time()
    if waiting >= 1:
        text += f" waiting={waiting:.0f}s"
    return text


class Bar:
    """Requests done of those to send, with the live counters beside them."""

    def __init__(self, file: IO[str] | None = None, *, notebook: bool = False) -> None:
        self.file = file
        self.notebook = notebook
        self.bar: Any = None
        self._next_postfix = 0.0
        self._stats: Stats | None = None

    def started(self, plan: Plan) -> None:
        if not plan.to_send:
            return
        if self.notebook:
            from tqdm.auto import tqdm as notebook_bar

            self.bar = notebook_bar(total=plan.to_send, unit="req", dynamic_ncols=True, smoothing=0.1)
        else:
            from tqdm import tqdm

            sized = _has_width(self.file)  # else a terminal that reports 0 columns: a fixed width
            self.bar = tqdm(total=plan.to_send, unit="req", file=self.file, dynamic_ncols=sized, smoothing=0.1,
                            ncols=None if sized else 100)  # fmt: skip

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None:
        bar = self.bar
        if bar is None:
            return
        self._stats = stats
        now = time.monotonic()
        if now >= self._next_postfix or stats.done == stats.total:  # a few times a second, not every row
            self._next_postfix = now + 0.25
            bar.set_postfix_str(live_counters(stats), refresh=False)
        bar.update(1)

    def stopping(self, grace_s: float) -> None:
        if self.bar is not None:
            self.bar.clear()

    def note(self, text: str) -> None:
        """A line above the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.file)

    def close(self) -> None:
        if self.bar is not None:
            if self._stats is not None:  # the last counters, not those of a quarter second before
                self.bar.set_postfix_str(live_counters(self._stats), refresh=True)
            self.bar.close()
            self.bar = None


def _has_width(file: IO[str] | None) -> bool:
    """Whether the terminal says how wide it is (under ``script`` without a size it says 0, and
    a bar sized to it would never show)."""
    try:
        return os.get_terminal_size((file or sys.stderr).fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False
