"""Running totals of a job: what the progress bar shows while it runs and the summary after.

Two kinds of count: requests this run sent and how they went (tokens, latency, retries), and
rows in the output and how they ended (which includes rows answered by earlier runs, and rows
sharing one request).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .records import ERROR, OK, PENDING, RowOutcome


class Counters:
    """Live request counters the scheduler updates as attempts happen (not only as rows finish)."""

    __slots__ = ("rate", "rate_limited", "requests", "retries")

    def __init__(self) -> None:
        self.requests = 0  # HTTP attempts sent
        self.rate_limited = 0  # of which answered 429
        self.retries = 0  # attempts after a request's first
        self.rate: float | None = None  # the departure rate the throttle allows now, requests/s


class RowTally:
    """How the rows of the output ended, counted as the output is assembled."""

    def __init__(self) -> None:
        self.rows = 0
        self.statuses: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()

    def add(self, status: str, error_type: str | None) -> None:
        self.rows += 1
        self.statuses[status] += 1
        if error_type:
            self.error_types[error_type] += 1


@dataclass(frozen=True, slots=True)
class Summary:
    rows: int  # rows in the output
    ok: int
    errors: int
    pending: int  # rows not finished (the run was interrupted)
    error_types: tuple[tuple[str, int], ...]  # of error rows, most frequent first
    answered: int  # requests this run finished (ok or error)
    prompt_tokens: int  # this run's
    completion_tokens: int
    wall_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0


class Stats:
    """This run's requests, updated once per finished request; cheap enough for the hot path."""

    def __init__(self, total: int) -> None:
        self.total = total  # requests this run is to send
        self.done = 0
        self.ok = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.counters = Counters()
        self._latencies = array("d")
        self._ttfts = array("d")

    def add(self, outcome: RowOutcome) -> None:
        self.done += 1
        if outcome.status == OK:
            self.ok += 1
            if outcome.latency_s is not None:
                self._latencies.append(outcome.latency_s)
            if outcome.ttft_s is not None:
                self._ttfts.append(outcome.ttft_s)
        else:
            self.errors += 1
        self.prompt_tokens += outcome.prompt_tokens or 0
        self.completion_tokens += outcome.completion_tokens or 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def summary(self, wall_s: float, rows: RowTally) -> Summary:
        latencies = sorted(self._latencies)
        ttfts = sorted(self._ttfts)
        return Summary(
            rows=rows.rows,
            ok=rows.statuses[OK],
            errors=rows.statuses[ERROR],
            pending=rows.statuses[PENDING],
            error_types=tuple(rows.error_types.most_common()),
            answered=self.done,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            wall_s=wall_s,
            latency_p50_s=percentile(latencies, 50),
            latency_p95_s=percentile(latencies, 95),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p95_s=percentile(ttfts, 95),
            requests=self.counters.requests,
            rate_limited=self.counters.rate_limited,
            retries=self.counters.retries,
        )


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks over sorted values (numpy's default)."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
